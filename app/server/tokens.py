"""Bearer tokens: read from ``Authorization: Bearer`` only (never from the query string),
and compared in constant time, for the API's dependencies and the console's sign-in alike."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from pydantic import SecretStr
from starlette.requests import Request


def bearer_token(request: Request) -> bytes | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode()


def matching_token(presented: bytes | None, accepted: Sequence[SecretStr]) -> int | None:
    """The index of the accepted token presented, or None. Every token is compared, each
    as a SHA-256 digest in constant time, so neither content nor length leaks in timing."""
    offered = hashlib.sha256(presented or b"").digest()
    found = None
    for index, token in enumerate(accepted):
        expected = hashlib.sha256(token.get_secret_value().encode()).digest()
        if hmac.compare_digest(offered, expected) and presented is not None:
            found = index
    return found

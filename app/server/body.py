"""Reading a request's body within a size cap and a time cap, for every endpoint that
takes one (the webhook's JSON, the console's forms): a client may not make the service
hold more than the cap, nor hold a request open by sending slowly."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import Request

from app.config import Settings
from app.errors import InvalidBody, PayloadTooLarge, RequestTimeout, UnsupportedMediaType


async def read_capped_body(request: Request, limit: int, within: float, what: str) -> bytes:
    """The body, read chunk by chunk: 413 (:class:`PayloadTooLarge`) as soon as it is
    declared or streamed past ``limit`` bytes, so no more than that is ever held; 408
    (:class:`RequestTimeout`) when it has not all arrived ``within`` seconds.
    ``what`` names the body in the messages ("the body", "the form")."""
    too_large = f"{what} is larger than {limit} bytes"
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(too_large)
    body = bytearray()
    try:
        async with asyncio.timeout(within):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise PayloadTooLarge(too_large)
    except TimeoutError:
        raise RequestTimeout(f"{what} did not arrive in time") from None
    return bytes(body)


async def read_json_body(request: Request, settings: Settings) -> Any:
    """The body as JSON: 415 unless JSON, 413 past BRIDGE_MAX_BODY_BYTES (declared or
    streamed), 408 when it does not arrive within BRIDGE_BODY_TIMEOUT (slow clients)."""
    limit = settings.max_body_bytes
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType("the body must be JSON (Content-Type: application/json)")
    body = await read_capped_body(
        request, limit, settings.body_timeout.total_seconds(), what="the body"
    )
    return parse_json(body)


def parse_json(body: bytes | bytearray) -> Any:
    """The body as JSON, or 400 (InvalidBody): not JSON, a duplicate key, or what the
    store could not keep."""
    try:
        parsed = json.loads(body, object_pairs_hook=_no_duplicate_keys)
        # What parses must also store: a lone surrogate ("\ud800") or nesting just under
        # the parser's limit would otherwise fail later, in the store, as a 500.
        json.dumps(parsed, ensure_ascii=False).encode()
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise InvalidBody(f"the body is not valid JSON: {_first_line(exc)}") from None
    return parsed


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:64]!r}")
        result[key] = value
    return result


def _first_line(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).split("\n")[0][:200]

"""The webhook body every load sends: what Erathos sends for the definition
``erathos-prefect-bridge erathos-template`` prints (every documented field, as strings),
with a fresh execution id per request spliced between a fixed prefix and suffix."""

from __future__ import annotations

import json
import uuid

from app.routing.event import METADATA
from tests.support.erathos import execution, render

WEBHOOK_PATH = "/webhooks/erathos"
_MARK = "00000000-0000-4000-8000-000000000000"


def body_parts() -> tuple[str, str]:
    """``prefix + execution_id + suffix`` is one full Erathos body."""
    template = {name: f"${{{{erathos.{name}}}}}" for name in METADATA}  # as cli.erathos_template
    body = json.dumps(render(template, execution(execution_id=_MARK)), separators=(",", ":"))
    prefix, found, suffix = body.partition(_MARK)
    assert found, "the execution id must appear in the body"
    return prefix, suffix


def execution_id(nonce: int, counter: int) -> str:
    """A canonical lower-case UUID, unique per (nonce, counter): the service stores
    ``str(UUID(...))``, so the fake Prefect sees exactly this string as the key."""
    return str(uuid.UUID(int=(nonce << 96) | (0x4000 << 64) | (0x8000 << 48) | counter))

"""``erathos-template``: the webhook request to paste into Erathos, with this
service's URL and token placeholders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.config import (
    PublicSettings,
)
from app.routing.event import METADATA
from app.routing.routes_file import erathos_filters, read_routes_file

if TYPE_CHECKING:
    pass


WEBHOOK_PATH = "/webhooks/erathos"
TOKEN_SECRET = "erathos_prefect_bridge_token"  # noqa: S105 (a secret's name, not its value)


def webhook_body_template() -> dict[str, str]:
    """The body Erathos is told to send: every documented ``erathos.*`` field."""
    return {name: f"${{{{erathos.{name}}}}}" for name in METADATA}


def erathos_template(
    settings: PublicSettings, url: str, secret_name: str = TOKEN_SECRET
) -> dict[str, Any]:
    """The webhook definition to create in Erathos, in Erathos's own JSON shape."""
    url = url.rstrip("/")
    if not url.endswith(WEBHOOK_PATH):
        url += WEBHOOK_PATH
    jobs: list[str] = list(settings.jobs)
    rules: list[dict[str, Any]] = []
    emitted = settings.prefect_events
    if settings.routes_file is not None:
        model = read_routes_file(settings.routes_file)
        route_jobs, rules = erathos_filters(model)
        jobs = jobs or route_jobs
        emitted |= any(connection.events for connection in model.connections.values())
    if emitted:
        rules = []  # every load becomes a Prefect event: Erathos must send FAILED ones too
    return {
        "description": "erathos-prefect-bridge: start the Prefect flow of this load",
        "is_active": True,
        "method": "POST",
        "url": url,
        "header": {
            "Content-Type": "application/json",
            "Authorization": f"Bearer ${{{{secrets.{secret_name}}}}}",
        },
        "body": webhook_body_template(),
        # Only rules every route has: a FAILED load is worth recording when some
        # route wants it, and routing decides the rest here.
        "rules": rules,
        "jobs": jobs or ["<ERATHOS_JOB_ID>"],
    }


# Commands that only read or replay the store: they need the database setting alone.

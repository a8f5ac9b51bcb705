"""``POST /webhooks/erathos``: where an Erathos event enters.

Counted and authenticated (:mod:`app.intake.auth`) before anything is read; then the body is
read and validated as an :class:`app.routing.event.ErathosEvent`, and
:mod:`app.intake.ingest` routes, stores and delivers it.

The token check and the counting are called in the handler here, where every other
route declares them as dependencies: on this, the hottest route, FastAPI's resolution
of dependencies was measured to cost accept throughput (bench/README.md says how much).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.errors import (
    InvalidBody,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
    responses,
    validated,
)
from app.intake.answers import WebhookOut
from app.intake.auth import require_webhook_token
from app.intake.ingest import counted, new_event, store_and_deliver
from app.routing.event import ErathosEvent
from app.server.body import read_json_body
from app.service import bridge_of

webhook_router = APIRouter(tags=["webhooks"])


@webhook_router.post(
    "/webhooks/erathos",
    status_code=202,
    response_model=WebhookOut,
    summary="Receive an Erathos job-completion webhook",
    description=(
        "Stores the event durably, then creates one Prefect flow run per matching route. "
        "202: stored (the deliveries say whether the flow run already exists). 200: this "
        "execution_id was received before; the answer repeats its outcome and nothing new "
        "is created."
    ),
    responses={
        200: {"model": WebhookOut, "description": "A repeated execution_id"},
        **responses(
            InvalidBody,
            Unauthorized,
            RequestTimeout,
            TooManyRequests,
            PayloadTooLarge,
            UnsupportedMediaType,
            ValidationFailed,
            ServiceUnavailable,
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ErathosEvent.model_json_schema()}},
        }
    },
)
async def receive_erathos_webhook(request: Request) -> Any:
    bridge = await bridge_of(request)
    with counted(bridge):
        await require_webhook_token(request, bridge)
        payload = await read_json_body(request, bridge.settings)
        event = validated(ErathosEvent, payload)
        accepted = await store_and_deliver(bridge, new_event(bridge, event, payload))
    # Returned as a response, not as the model: FastAPI would validate the answer again
    # against response_model (kept for the docs) before serialising it.
    return Response(
        accepted.answer().model_dump_json(),
        status_code=202 if accepted.created else 200,
        media_type="application/json",
    )

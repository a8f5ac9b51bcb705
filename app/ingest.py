"""Taking in one request: its body read and parsed (size-capped, time-capped, JSON only),
the event routed, stored with its deliveries in one transaction, and handed to the
dispatcher, which is awaited for at most ``BRIDGE_SYNC_WAIT``; then the answer.

The Erathos webhook (:mod:`app.webhook`) and the Prefect-shaped endpoints
(:mod:`app.dropin`) share these steps.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Self

import structlog
from fastapi import Request
from pydantic import BaseModel, Field, TypeAdapter

from app.body import read_capped_body
from app.delivery import Turn
from app.errors import (
    BridgeError,
    InvalidBody,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from app.event import ErathosEvent
from app.events import emission_key, emission_route
from app.metrics import DUPLICATE, NO_ROUTE
from app.records import (
    DeliveryRecord,
    DeliveryState,
    EventRecord,
    EventState,
    NewDelivery,
    NewEvent,
    StoreUnavailable,
    event_state,
)
from app.service import Bridge, BridgeDep
from app.settings import Settings

log = structlog.get_logger("erathos_prefect_bridge.api")

Status = Literal["delivered", "queued", "failed", "ignored"]
# The webhook's words for an event's state: what the caller should expect to happen.
_STATUS: dict[EventState, Status] = {
    EventState.DELIVERED: "delivered",
    EventState.PENDING: "queued",
    EventState.DEAD: "failed",
    EventState.IGNORED: "ignored",
}


@contextmanager
def counted(bridge: Bridge) -> Iterator[None]:
    """Count a request as received, and as rejected by the error it is answered with
    (entered before the token check, so a refused token is counted too)."""
    bridge.metrics.received.inc()
    try:
        yield
    except BridgeError as exc:
        bridge.metrics.reject(exc.code)
        raise


async def count_event(bridge: BridgeDep) -> AsyncIterator[None]:
    """:func:`counted`, as a dependency (listed before the token check)."""
    with counted(bridge):
        yield


# -- the body -------------------------------------------------------------------------------


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


# -- the answer -----------------------------------------------------------------------------

_TIME = TypeAdapter(datetime)


def utc_time(epoch: float) -> datetime:
    """A stored time (epoch seconds) as every answer shows it: ISO 8601 in UTC, written
    ``2026-11-30T08:03:59.225778Z`` once serialised."""
    return datetime.fromtimestamp(epoch, UTC)


def iso_utc(epoch: float) -> str:
    """A stored time as text, exactly as the API's JSON writes it (for the CLI)."""
    text: str = _TIME.dump_python(utc_time(epoch), mode="json")
    return text


class DeliveryOut(BaseModel):
    """One target of the event: a flow run, or why there is none (yet)."""

    id: str
    route: str
    state: DeliveryState
    attempts: int = Field(
        description="how many attempts were made (each one: GET /events/{id}, attempts_made)"
    )
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    error: str | None = None
    next_attempt_at: datetime | None = Field(
        default=None, description="when a pending delivery is tried next (UTC)"
    )

    @classmethod
    def of(cls, d: DeliveryRecord) -> Self:
        return cls(
            id=d.id,
            route=d.route,
            state=d.state,
            attempts=d.attempts,
            flow_run_id=d.flow_run_id,
            flow_run_url=d.flow_run_url,
            error=d.last_error,
            next_attempt_at=(
                utc_time(d.next_attempt_at) if d.state is DeliveryState.PENDING else None
            ),
        )


class WebhookOut(BaseModel):
    event_id: str
    execution_id: str
    duplicate: bool
    status: Status
    reason: str | None = None
    deliveries: list[DeliveryOut]

    @classmethod
    def of(cls, event: EventRecord, found: Sequence[DeliveryRecord], *, duplicate: bool) -> Self:
        return cls(
            event_id=event.id,
            execution_id=event.execution_id,
            duplicate=duplicate,
            status=_STATUS[event_state(found)],
            reason=event.ignored_reason,
            deliveries=[DeliveryOut.of(d) for d in found],
        )


# -- routed, stored, delivered --------------------------------------------------------------


def new_event(bridge: Bridge, event: ErathosEvent, payload: dict[str, Any]) -> NewEvent:
    """The event as it is stored, with one delivery per route that wants it, and one per
    connection it is emitted to as a Prefect event (after the routes': the answer's
    ``deliveries[0]`` stays the first flow run)."""
    decision = bridge.router.decide(event)
    runs = [
        NewDelivery(
            route.name, route.connection, bridge.router.idempotency_key(event.execution_id, route)
        )
        for route in decision.routes
    ]
    emissions = []
    if decision.emit_on:
        key = emission_key(event)
        emissions = [NewDelivery(emission_route(name), name, key) for name in decision.emit_on]
    return NewEvent(
        execution_id=event.execution_id,
        payload=payload,
        deliveries=[*runs, *emissions],
        job_id=str(event.job_id) if event.job_id else None,
        schema_name=event.schema_name,
        table_name=event.table_name,
        status=event.status,
        ignored_reason=decision.reason,
    )


@dataclass(frozen=True)
class Accepted:
    """What became of one request: the stored event (the earlier one, for a repeated
    execution id) and one turn per delivery."""

    created: bool
    event: EventRecord
    turns: list[Turn]

    def answer(self) -> WebhookOut:
        found = [turn.delivery for turn in self.turns]
        return WebhookOut.of(self.event, found, duplicate=not self.created)


async def store_and_deliver(bridge: Bridge, new: NewEvent) -> Accepted:
    """Commit the event and its deliveries (503 if that fails: nothing is acknowledged),
    then let the dispatcher try the new deliveries, waiting up to BRIDGE_SYNC_WAIT. A
    repeated execution id finds the earlier event; nothing is sent for it."""
    try:
        recorded = await bridge.dispatcher.record(new)
    except StoreUnavailable as exc:
        log.error("event not stored, answered 503", execution_id=new.execution_id, error=str(exc))
        raise ServiceUnavailable() from None
    if not recorded.created:
        message = "duplicate event"
        bridge.metrics.reject(DUPLICATE)
    elif not recorded.deliveries:
        message = "event ignored"
        bridge.metrics.reject(NO_ROUTE)
    else:
        message = "event accepted"
        bridge.metrics.accepted.inc()
    log.info(
        message,
        execution_id=new.execution_id,
        event_id=recorded.event.id,
        job_id=new.job_id,
        table_name=new.table_name,
        status=new.status,
        routes=[d.route for d in recorded.deliveries],
        connections=sorted({d.connection for d in recorded.deliveries}),
        reason=recorded.event.ignored_reason,
    )
    if not recorded.created:
        return Accepted(False, recorded.event, [Turn(d) for d in recorded.deliveries])
    wait = bridge.settings.sync_wait.total_seconds()
    return Accepted(True, recorded.event, await bridge.dispatcher.deliver_new(recorded, wait))

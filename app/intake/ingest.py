"""Taking in one request: its body read and parsed (size-capped, time-capped, JSON only),
the event routed, stored with its deliveries in one transaction, and handed to the
dispatcher, which is awaited for at most ``BRIDGE_SYNC_WAIT``; then the answer.

The Erathos webhook (:mod:`app.intake.webhook`) and the Prefect-shaped endpoints
(:mod:`app.intake.dropin`) share these steps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog

from app.delivery.deadlines import announce
from app.delivery.turn import Turn
from app.errors import (
    BridgeError,
    ServiceUnavailable,
    StoreUnavailable,
)
from app.intake.answers import SetJoinOut, WebhookOut
from app.metrics import DUPLICATE, NO_ROUTE
from app.routing.event import ErathosEvent
from app.routing.prefect_event import emission_key, emission_route
from app.routing.sets import joining
from app.service import Bridge, BridgeDep
from app.storage.records import EventRecord, NewDelivery, NewEvent
from app.storage.sets import Joined

log = structlog.get_logger("erathos_prefect_bridge.intake.ingest")


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
        sets=joining(decision.sets, bridge.router.set_plans, event),
    )


@dataclass(frozen=True)
class Accepted:
    """What became of one request: the stored event (the earlier one, for a repeated
    execution id) and one turn per delivery."""

    created: bool
    event: EventRecord
    turns: list[Turn]
    joined: list[Joined] = field(default_factory=list)

    def answer(self) -> WebhookOut:
        found = [turn.delivery for turn in self.turns]
        answer = WebhookOut.of(self.event, found, duplicate=not self.created)
        answer.sets = [SetJoinOut.of(j) for j in self.joined]
        return answer


async def store_and_deliver(bridge: Bridge, new: NewEvent) -> Accepted:
    """Commit the event and its deliveries (503 if that fails: nothing is acknowledged),
    then let the dispatcher try the new deliveries, waiting up to BRIDGE_SYNC_WAIT. A
    repeated execution id finds the earlier event; nothing is sent for it."""
    try:
        recorded = await bridge.dispatcher.record(new)
    except StoreUnavailable as exc:
        log.error("event not stored, answered 503", execution_id=new.execution_id, error=str(exc))
        raise ServiceUnavailable() from None
    for closed in recorded.closed:
        announce(closed, bridge.metrics)
    if recorded.closed:
        bridge.dispatcher.wake()  # the windows' runs and events: claimed now
    if not recorded.created:
        message = "duplicate event"
        bridge.metrics.reject(DUPLICATE)
    elif not recorded.deliveries and recorded.joined:
        message = "event accepted into a set"
        bridge.metrics.accepted.inc()
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
        sets=[f"{j.set_name}/{j.window}" for j in recorded.joined] or None,
    )
    if not recorded.created:
        joined = await _joined_before(bridge, new)
        return Accepted(False, recorded.event, [Turn(d) for d in recorded.deliveries], joined)
    wait = bridge.settings.sync_wait.total_seconds()
    turns = await bridge.dispatcher.deliver_new(recorded, wait)
    return Accepted(True, recorded.event, turns, recorded.joined)


async def _joined_before(bridge: Bridge, new: NewEvent) -> list[Joined]:
    """For a repeated load: the windows it is in (the answer repeats them)."""
    if not new.sets or bridge.windows is None:
        return []
    plans = {join.plan.name: join.plan for join in new.sets}
    try:
        return await bridge.windows.joined_by(new.execution_id, plans)
    except StoreUnavailable:
        return []

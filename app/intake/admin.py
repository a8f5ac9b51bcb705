"""The admin API (only with ``BRIDGE_ADMIN_TOKEN``): inspect events, their deliveries
and attempts, and replay dead or delivered deliveries."""

from __future__ import annotations

from contextlib import suppress
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from app.errors import (
    Conflict,
    FieldError,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
    responses,
    validated,
)
from app.intake.answers import DeliveryOut
from app.intake.auth import require_admin_token
from app.intake.diagnose import simulate
from app.masking import Masker
from app.routing.event import ErathosEvent
from app.server.body import read_json_body
from app.service import BridgeDep
from app.storage.history import CURSOR_PATTERN, nothing_to_replay, page_cursor, parse_cursor
from app.storage.records import (
    AttemptRecord,
    DeliveryNotFound,
    DeliveryRecord,
    DeliveryState,
    DeliveryStillPending,
    EventRecord,
    EventState,
    RunState,
    event_run_state,
    event_state,
)
from app.times import utc_time

admin_router = APIRouter(
    tags=["admin"],
    dependencies=[Depends(require_admin_token)],
    responses=responses(Unauthorized, ServiceUnavailable),
)


class AttemptOut(BaseModel):
    number: int
    started_at: datetime
    duration_ms: float
    outcome: str
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    retry_in_seconds: float | None


class DeliveryDetail(DeliveryOut):
    connection: str
    idempotency_key: str
    created_at: datetime
    finished_at: datetime | None
    run_state: RunState | None = Field(
        description="its flow run's state in Prefect, as last followed (gone: deleted there)"
    )
    run_state_at: datetime | None
    run_started_at: datetime | None
    run_ended_at: datetime | None
    followed: bool = Field(description="whether its run is still followed (not final yet)")


class DeliveryAttempts(DeliveryDetail):
    """A delivery with every attempt it made (``attempts`` of them): only where they are
    loaded, the single event."""

    attempts_made: list[AttemptOut]


class EventSummary(BaseModel):
    id: str
    execution_id: str
    received_at: datetime
    job_id: str | None
    schema_name: str | None
    table_name: str | None
    status: str | None
    state: EventState
    run_state: RunState | None = Field(
        description="its flow runs' state, summed up: the most telling one's (failed first)"
    )
    reason: str | None


class EventOut(EventSummary):
    deliveries: list[DeliveryDetail]


class EventDetail(EventSummary):
    deliveries: list[DeliveryAttempts]
    payload: dict[str, object]


class EventPage(BaseModel):
    events: list[EventOut]
    next_cursor: str | None


def _delivery_detail(d: DeliveryRecord, masker: Masker) -> DeliveryDetail:
    return DeliveryDetail(
        **_delivery_out(d, masker).model_dump(),
        connection=d.connection,
        idempotency_key=d.idempotency_key,
        created_at=utc_time(d.created_at),
        finished_at=utc_time(d.finished_at) if d.finished_at else None,
        run_state=d.run_state,
        run_state_at=_time(d.run_state_at),
        run_started_at=_time(d.run_started_at),
        run_ended_at=_time(d.run_ended_at),
        followed=d.follow_due_at is not None,
    )


def _time(epoch: float | None) -> datetime | None:
    return utc_time(epoch) if epoch is not None else None


def _delivery_out(d: DeliveryRecord, masker: Masker) -> DeliveryOut:
    return DeliveryOut.of(d).model_copy(update={"error": _masked(masker, d.last_error)})


def _attempt_out(a: AttemptRecord, masker: Masker) -> AttemptOut:
    return AttemptOut(
        number=a.number,
        started_at=utc_time(a.started_at),
        duration_ms=a.duration_ms,
        outcome=a.outcome,
        status_code=a.status_code,
        error=_masked(masker, a.error),
        response_excerpt=_masked(masker, a.response_excerpt),
        retry_in_seconds=a.retry_in,
    )


def _masked(masker: Masker, text: str | None) -> str | None:
    """Prefect's words as stored, every configured secret masked in every form: stored
    masked already, but by what the release that stored them knew to mask."""
    return None if text is None else masker.mask(text)


def _event_summary(event: EventRecord, found: list[DeliveryRecord]) -> dict[str, Any]:
    return EventSummary(
        id=event.id,
        execution_id=event.execution_id,
        received_at=utc_time(event.received_at),
        job_id=event.job_id,
        schema_name=event.schema_name,
        table_name=event.table_name,
        status=event.status,
        state=event_state(found),
        run_state=event_run_state(found),
        reason=event.ignored_reason,
    ).model_dump()


@admin_router.get("/events", response_model=EventPage, summary="List events, newest first")
async def list_events(
    bridge: BridgeDep,
    state: Annotated[EventState | None, Query()] = None,
    run_state: Annotated[
        RunState | None, Query(description="events with a flow run in this state")
    ] = None,
    job_id: Annotated[str | None, Query(max_length=64)] = None,
    table_name: Annotated[str | None, Query(max_length=1024)] = None,
    execution_id: Annotated[
        str | None, Query(max_length=200, description="part of the execution id (any case)")
    ] = None,
    since: Annotated[datetime | None, Query(description="received at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="received before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=100, pattern=CURSOR_PATTERN)] = None,
) -> EventPage:
    before = _parse_cursor(cursor) if cursor else None
    page = await bridge.history.list_events(
        state=state,
        job_id=job_id,
        table_name=table_name,
        execution_id_contains=execution_id,
        since=_epoch(since, "since"),
        until=_epoch(until, "until"),
        before=before,
        run_state=run_state,
        limit=limit,
    )
    out = [
        EventOut(
            **_event_summary(event, found),
            deliveries=[_delivery_detail(d, bridge.masker) for d in found],
        )
        for event, found in page
    ]
    next_cursor = None
    if len(page) == limit:
        next_cursor = page_cursor(page[-1][0])
    return EventPage(events=out, next_cursor=next_cursor)


def _epoch(when: datetime | None, field: str) -> float | None:
    """A query time as epoch seconds; a time without an offset is UTC."""
    if when is None:
        return None
    try:
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError):
        message = "is out of range"
        raise ValidationFailed(
            f"invalid {field}", fields=[FieldError(field=field, message=message)]
        ) from None


def _parse_cursor(cursor: str) -> tuple[float, str]:
    try:
        return parse_cursor(cursor)
    except ValueError:
        raise ValidationFailed("invalid cursor") from None


@admin_router.get(
    "/events/{event_id}",
    response_model=EventDetail,
    summary="One event with its deliveries and every attempt",
    responses=responses(NotFound),
)
async def get_event(event_id: str, bridge: BridgeDep) -> EventDetail:
    found = await bridge.history.get_event(event_id)
    if found is None:
        raise NotFound(f"no event {event_id}")
    event, found_deliveries = found
    tried = await bridge.history.attempts_of([d.id for d in found_deliveries])
    deliveries = [
        DeliveryAttempts(
            **_delivery_detail(d, bridge.masker).model_dump(),
            attempts_made=[_attempt_out(a, bridge.masker) for a in tried if a.delivery_id == d.id],
        )
        for d in found_deliveries
    ]
    return EventDetail(
        **_event_summary(event, found_deliveries), deliveries=deliveries, payload=event.payload
    )


@admin_router.post(
    "/deliveries/{delivery_id}/replay",
    response_model=DeliveryOut,
    status_code=202,
    summary="Replay a dead or delivered delivery",
    description=(
        "The delivery becomes pending and due now, with a fresh attempt budget. It keeps "
        "its idempotency key, so Prefect answers with the flow run it already made, if "
        "any; with new_run=true it gets a new key and Prefect creates a new run."
    ),
    responses=responses(NotFound, Conflict),
)
async def replay_delivery(
    delivery_id: str, bridge: BridgeDep, new_run: Annotated[bool, Query()] = False
) -> DeliveryOut:
    delivery = await bridge.history.get_delivery(delivery_id)
    if delivery is None:
        raise NotFound(f"no delivery {delivery_id}")
    replayed = await _replay(bridge, delivery, new_run)
    bridge.dispatcher.wake()
    return replayed


async def _replay(bridge: BridgeDep, delivery: DeliveryRecord, new_run: bool) -> DeliveryOut:
    try:
        d = await bridge.history.replay(delivery.id, new_run=new_run)
    except DeliveryNotFound:
        raise NotFound(f"no delivery {delivery.id}") from None
    except DeliveryStillPending as exc:
        raise Conflict(str(exc)) from None
    return _delivery_out(d, bridge.masker)


@admin_router.post(
    "/events/{event_id}/replay",
    response_model=list[DeliveryOut],
    status_code=202,
    summary="Replay every dead or delivered delivery of an event",
    description=(
        "409 for an event that has nothing to replay (it was ignored: it has no delivery; or "
        "every delivery is still pending): the error says which."
    ),
    responses=responses(NotFound, Conflict),
)
async def replay_event(
    event_id: str, bridge: BridgeDep, new_run: Annotated[bool, Query()] = False
) -> list[DeliveryOut]:
    found = await bridge.history.get_event(event_id)
    if found is None:
        raise NotFound(f"no event {event_id}")
    event, found_deliveries = found
    if (why := nothing_to_replay(event, found_deliveries)) is not None:
        raise Conflict(why)
    replayed = []
    try:
        for delivery in found_deliveries:
            if delivery.state is DeliveryState.PENDING:
                continue
            with suppress(Conflict, NotFound):  # it became pending (or went) meanwhile
                replayed.append(await _replay(bridge, delivery, new_run))
    finally:
        bridge.dispatcher.wake()
    return replayed


@admin_router.post(
    "/simulate",
    summary="Dry run: which routes an event matches, and the exact requests it would send",
    description=(
        "Nothing is stored or sent. For every route: whether it matches the event, or the "
        "first rule that does not hold; for matches, the request (secrets masked)."
    ),
    responses=responses(ValidationFailed),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ErathosEvent.model_json_schema()}},
        }
    },
)
async def simulate_event(request: Request, bridge: BridgeDep) -> dict[str, Any]:
    payload = await read_json_body(request, bridge.settings)
    event = validated(ErathosEvent, payload)
    return simulate(event, bridge.router, bridge.connections, bridge.lookup)

"""What the webhook and the admin API answer about an event and its deliveries: the
response models, and the webhook's words for an event's state."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal, Self

from pydantic import BaseModel, Field

from app.storage.records import DeliveryRecord, DeliveryState, EventRecord, EventState, event_state
from app.storage.sets import Joined, WindowState
from app.times import utc_time

Status = Literal["delivered", "queued", "failed", "ignored"]
# The webhook's words for an event's state: what the caller should expect to happen.
_STATUS: dict[EventState, Status] = {
    EventState.DELIVERED: "delivered",
    EventState.PENDING: "queued",
    EventState.DEAD: "failed",
    EventState.IGNORED: "ignored",
}


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


class SetJoinOut(BaseModel):
    """A set the load joined (the routes file's ``sets``), and where its window stands."""

    set: str
    window: str = Field(description="the window's id, as ${{set.window}} gives it")
    members: list[str] = Field(description="the set's members this load is")
    state: WindowState = Field(description="open, completed (by this load), late")
    missing: list[str]
    deadline: datetime

    @classmethod
    def of(cls, joined: Joined) -> Self:
        return cls(
            set=joined.set_name,
            window=joined.window,
            members=list(joined.members),
            state=joined.state,
            missing=list(joined.missing),
            deadline=utc_time(joined.deadline_at),
        )


class WebhookOut(BaseModel):
    event_id: str
    execution_id: str
    duplicate: bool
    status: Status
    reason: str | None = None
    deliveries: list[DeliveryOut]
    sets: list[SetJoinOut] = Field(
        default_factory=list, description="the sets' windows the load joined"
    )

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

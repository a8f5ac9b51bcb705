"""What the store keeps, as typed records: an event, its deliveries (one per event and
route, each with a :class:`DeliveryState`) and their attempts; the typed update one
attempt makes to its delivery; and the store's errors."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.storage.sets import Closed, Joined, SetJoin

# Route names the service reserves (a routes file may not use them), kept with each
# delivery like any route's.
DROP_IN_ROUTE = "drop-in"  # requests in Prefect's own shape, forwarded as they came
# The execution emitted as a Prefect event (app.routing.prefect_event): this route on the default
# connection, ``prefect-event:<connection>`` on another (no route name has a colon).
PREFECT_EVENT_ROUTE = "prefect-event"


def dropin_key(kind: str, target_id: str, key: str) -> str:
    """What a drop-in call is stored under (as an event's execution id): its target, as
    Prefect deduplicates, and its idempotency key, in a form no Erathos execution id can
    take (those never hold a ``/``): ``drop-in/flow/<id>/<key>``."""
    return f"{DROP_IN_ROUTE}/{kind}/{target_id}/{key}"


class DeliveryState(StrEnum):
    """Where one delivery stands: waiting for a flow run, done, or given up on."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class EventState(StrEnum):
    """An event's state, summed up from its deliveries (``ignored``: it has none)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    IGNORED = "ignored"


class RunState(StrEnum):
    """A flow run's state as Prefect names its type (lower case), or ``gone``: Prefect no
    longer has the run (deleted). Followed until it is :data:`FINAL_RUN_STATES`."""

    SCHEDULED = "scheduled"
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CRASHED = "crashed"
    CANCELLED = "cancelled"
    GONE = "gone"


TERMINAL_RUN_STATES = (RunState.COMPLETED, RunState.FAILED, RunState.CRASHED, RunState.CANCELLED)
FINAL_RUN_STATES = (*TERMINAL_RUN_STATES, RunState.GONE)  # nothing more to follow
# An event's run state, summed up: its most telling run's, worst first.
_RUN_STATE_RANK = (
    RunState.FAILED,
    RunState.CRASHED,
    RunState.CANCELLED,
    RunState.GONE,
    RunState.CANCELLING,
    RunState.PAUSED,
    RunState.RUNNING,
    RunState.PENDING,
    RunState.SCHEDULED,
    RunState.COMPLETED,
)


class DeliveryNotFound(LookupError):
    """No delivery has this id."""


class DeliveryStillPending(Exception):
    """A replay of a delivery that is still pending: it is retried by itself."""

    def __init__(self, delivery_id: str) -> None:
        super().__init__("the delivery is still pending: it is retried by itself")
        self.delivery_id = delivery_id


@dataclass(frozen=True)
class NewDelivery:
    route: str
    connection: str
    idempotency_key: str


@dataclass(frozen=True)
class NewEvent:
    """One incoming request as it is stored (an Erathos event, or a Prefect-shaped
    request), with the deliveries routing made of it."""

    execution_id: str
    payload: dict[str, Any]
    deliveries: Sequence[NewDelivery] = ()
    job_id: str | None = None
    schema_name: str | None = None
    table_name: str | None = None
    status: str | None = None
    ignored_reason: str | None = None
    sets: Sequence[SetJoin] = ()  # the sets the load joins, in the same transaction


@dataclass(frozen=True)
class EventRecord:
    id: str
    execution_id: str
    received_at: float
    job_id: str | None
    schema_name: str | None
    table_name: str | None
    status: str | None
    payload: dict[str, Any]
    ignored_reason: str | None


@dataclass(frozen=True)
class DeliveryRecord:
    id: str
    event_id: str
    route: str
    connection: str
    idempotency_key: str
    state: DeliveryState
    attempts: int
    created_at: float
    window_started_at: float
    next_attempt_at: float
    lease_owner: str | None
    lease_expires_at: float | None
    flow_run_id: str | None
    flow_run_url: str | None
    last_status_code: int | None
    last_error: str | None
    finished_at: float | None
    ordinal: int = 0  # its place among its event's deliveries
    attempts_before_replay: int = 0  # of ``attempts``, those made before its last replay
    # Its flow run as followed in Prefect (app.delivery.follow); None until first seen.
    run_state: RunState | None = None
    run_state_at: float | None = None
    run_started_at: float | None = None
    run_ended_at: float | None = None
    follow_due_at: float | None = None  # when it is asked for next; None: not followed
    follow_owner: str | None = None

    @property
    def budget_used(self) -> int:
        """The attempts its retry budget counts: those since its last replay."""
        return self.attempts - self.attempts_before_replay


@dataclass(frozen=True)
class AttemptRecord:
    id: int
    delivery_id: str
    number: int
    started_at: float
    duration_ms: float
    outcome: str
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    retry_in: float | None


@dataclass(frozen=True)
class Recorded:
    """The stored event and its deliveries; ``created`` is False for a repeated execution id."""

    event: EventRecord
    deliveries: list[DeliveryRecord]
    created: bool
    joined: list[Joined] = field(default_factory=list)  # the sets' windows the load joined
    closed: list[Closed] = field(default_factory=list)  # the windows its transaction closed


@dataclass(frozen=True)
class Claim:
    """A delivery this process holds the lease on, with the event it carries."""

    delivery: DeliveryRecord
    event: EventRecord


@dataclass(frozen=True)
class DeliveryUpdate:
    """What one attempt changes in its delivery: always its state and the last answer;
    a flow run and the finish time when it ends, the next attempt's time when it does not."""

    state: DeliveryState
    last_status_code: int | None
    last_error: str | None
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    finished_at: float | None = None
    next_attempt_at: float | None = None
    followed: bool = True  # its flow run, if it made one (False: BRIDGE_FOLLOW_RUNS is off)

    def columns(self) -> dict[str, Any]:
        """The delivery's columns to set: the three always, the others when given."""
        values: dict[str, Any] = {
            "state": self.state.value,
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
        }
        for name in ("flow_run_id", "flow_run_url", "finished_at", "next_attempt_at"):
            if (value := getattr(self, name)) is not None:
                values[name] = value
        made = self.state is DeliveryState.DELIVERED and self.flow_run_id is not None
        if made and self.followed:
            # A flow run made (or found): followed from now on, until its state is final.
            values["follow_due_at"] = self.finished_at
        return values

    def applied_to(self, delivery: DeliveryRecord) -> DeliveryRecord:
        """The delivery as it is once this update is stored (and its lease released)."""
        changed = self.columns() | {"state": self.state}
        return replace(delivery, lease_owner=None, lease_expires_at=None, **changed)


def event_run_state(deliveries: Sequence[DeliveryRecord]) -> RunState | None:
    """The state of an event's flow runs, summed up: its most telling run's (a failure
    before a run still going, before a completion); None while no run has a state."""
    return summed_run_state(d.run_state for d in deliveries if d.run_state is not None)


def summed_run_state(states: Iterable[RunState]) -> RunState | None:
    """The most telling of these runs' states (see :func:`event_run_state`)."""
    found = set(states)
    return next((s for s in _RUN_STATE_RANK if s in found), None)


def event_state(deliveries: Sequence[DeliveryRecord]) -> EventState:
    """Dead if any delivery is, pending if any is, delivered when all are."""
    states = {d.state for d in deliveries}
    if not states:
        return EventState.IGNORED
    if DeliveryState.DEAD in states:
        return EventState.DEAD
    if DeliveryState.PENDING in states:
        return EventState.PENDING
    return EventState.DELIVERED

"""What the store keeps, as typed records: an event, its deliveries (one per event and
route, each with a :class:`DeliveryState`) and their attempts; the typed update one
attempt makes to its delivery; and the store's errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any


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


class StoreUnavailable(Exception):
    """The store cannot read or commit right now (locked, read-only, disk full, gone,
    restarting): the caller answers 503 or tries again later."""


class QueryTimedOut(StoreUnavailable):
    """An operator's read ran past ``BRIDGE_DB_READ_TIMEOUT`` and was stopped."""


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
        return values

    def applied_to(self, delivery: DeliveryRecord) -> DeliveryRecord:
        """The delivery as it is once this update is stored (and its lease released)."""
        changed = self.columns() | {"state": self.state}
        return replace(delivery, lease_owner=None, lease_expires_at=None, **changed)


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

"""What test_store.py and test_history.py share: a database opened for one test, events
recorded, attempts completed and deliveries finished through the store, rows read raw."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Table, func, select, update

from app.routing.windows import Within
from app.storage.database import Database
from app.storage.history import History
from app.storage.records import (
    AttemptRecord,
    DeliveryRecord,
    DeliveryState,
    DeliveryUpdate,
    NewDelivery,
    NewEvent,
    Recorded,
)
from app.storage.sets import SetJoin, SetPlan
from app.storage.store import Clock, Store

CONNECTION = "prefect"
EXPIRED = -1.0  # a lease that has run out at birth, so no test waits for one
LONG = 60.0  # a lease that outlives any test

# The attempt's outcome that leads to each state (a pending delivery is retried).
OUTCOMES = {
    DeliveryState.DELIVERED: "delivered",
    DeliveryState.DEAD: "permanent",
    DeliveryState.PENDING: "transient",
}


@asynccontextmanager
async def opened(url: str, **options: Any) -> AsyncIterator[Database]:
    """The database ``url`` names, schema created, closed on the way out."""
    database = await Database.open(url, **options)
    try:
        yield database
    finally:
        await database.close()


async def open_store(url: str, clock: Clock = time.time, **options: Any) -> Store:
    """The store in the database ``url`` names; ``options`` as :meth:`Database.open`
    (close it with ``store.database.close()``)."""
    return Store(await Database.open(url, **options), clock)


async def record(
    store: Store,
    execution_id: str | None = None,
    *,
    routes: Sequence[str] = ("main",),
    connection: str = CONNECTION,
    claim_for: str | None = None,
    lease_seconds: float = 0.0,
    job_id: str | None = "job-1",
    table_name: str | None = "orders",
    ignored_reason: str | None = None,
    payload: dict[str, Any] | None = None,
) -> Recorded:
    """Record an event with one delivery per route (none: an ignored event)."""
    execution_id = execution_id or uuid.uuid4().hex
    new = NewEvent(
        execution_id=execution_id,
        payload=payload if payload is not None else {"execution_id": execution_id},
        deliveries=[NewDelivery(r, connection, f"{execution_id}:{r}") for r in routes],
        job_id=job_id,
        schema_name="raw_shop",
        table_name=table_name,
        status="FINISHED",
        ignored_reason=ignored_reason,
    )
    return await store.record_event(new, claim_for=claim_for, lease_seconds=lease_seconds)


def ending(state: DeliveryState, at: float, *, flow_run_id: str | None = None) -> DeliveryUpdate:
    """The update of an attempt that ends its delivery ``state`` (delivered or dead) at ``at``."""
    if state is DeliveryState.DELIVERED:
        return DeliveryUpdate(state, 201, None, flow_run_id=flow_run_id, finished_at=at)
    assert state is DeliveryState.DEAD, state
    return DeliveryUpdate(state, 422, "HTTP 422: the flow refused the parameters", finished_at=at)


def attempt_of(delivery: DeliveryRecord, update: DeliveryUpdate, at: float) -> AttemptRecord:
    """The attempt (numbered as its claim counted it) that made ``update``, started ``at``."""
    return AttemptRecord(
        id=0,  # given by the store
        delivery_id=delivery.id,
        number=delivery.attempts,
        started_at=at,
        duration_ms=12.5,
        outcome=OUTCOMES[update.state],
        status_code=update.last_status_code,
        error=update.last_error,
        response_excerpt=None,
        retry_in=None,
    )


async def complete(
    store: Store, delivery: DeliveryRecord, owner: str, update: DeliveryUpdate
) -> bool:
    """Record an attempt of ``delivery`` by ``owner`` (now, by the store's clock) and apply
    ``update``; False when ``owner`` no longer held the lease."""
    return await store.complete_attempt(attempt_of(delivery, update, store.clock()), update, owner)


async def finished(store: Store, state: DeliveryState, **kwargs: Any) -> Recorded:
    """An event (``kwargs`` as :func:`record`) whose single delivery was tried once and
    ended ``state`` (delivered or dead), now."""
    recorded = await record(store, claim_for="worker", lease_seconds=LONG, **kwargs)
    [delivery] = recorded.deliveries
    assert await complete(store, delivery, "worker", ending(state, store.clock()))
    return recorded


async def rows(database: Database, table: Table) -> int:
    count = select(func.count()).select_from(table)
    return await database.run(lambda conn: int(conn.scalar(count) or 0))


async def set_columns(database: Database, table: Table, row_id: str, **values: Any) -> None:
    """Arrange a row directly (what the store would otherwise set by itself)."""
    arranged = update(table).where(table.c.id == row_id).values(**values)
    await database.run(lambda conn: conn.execute(arranged))


async def delivery(history: History, delivery_id: str) -> DeliveryRecord:
    """The delivery as it is stored now."""
    found = await history.get_delivery(delivery_id)
    assert found is not None
    return found


def set_plan(name: str, members: tuple[str, ...]) -> SetPlan:
    """A set whose windows close an hour after they open, each closing making one flow
    run delivery (``set:<name>``)."""

    def made(window: str, late: bool, run: bool) -> list[NewDelivery]:
        return [NewDelivery(f"set:{name}", CONNECTION, f"set:{name}:{window}")] if run else []

    return SetPlan(name, members, Within(3600), True, made)


async def load_into(store: Store, plan: SetPlan, member: str, rows: int = 1) -> Recorded:
    """A load of ``member`` joining ``plan``'s set, stored."""
    execution_id = uuid.uuid4().hex
    load = {"execution_id": execution_id, "table_name": member, "rows": rows, "status": "FINISHED"}
    joins = [SetJoin(plan, (member,), load)]
    return await store.record_event(NewEvent(execution_id=execution_id, payload={}, sets=joins))

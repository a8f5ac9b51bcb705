"""An event's stored state (``events.state``, schema 4) follows its deliveries in every
transition, in the transaction that changes them, and the upgrade from schema 3 fills
it in for the events stored before. On SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from app.storage.database import Database
from app.storage.history import History
from app.storage.records import DeliveryState, DeliveryUpdate, EventState, event_state
from app.storage.schema import SCHEMA_VERSION, events
from app.storage.store import Store
from tests.support.stores import LONG, complete, ending, finished, opened, record

pytestmark = [pytest.mark.anyio, pytest.mark.every_database]


async def stored_state(database: Database, event_id: str) -> EventState:
    query = select(events.c.state).where(events.c.id == event_id)
    found: str | None = await database.run(lambda conn: conn.scalar(query))
    assert found is not None
    return EventState(found)


async def summed_up(history: History, event_id: str) -> EventState:
    found = await history.get_event(event_id)
    assert found is not None
    return event_state(found[1])


async def test_a_new_event_is_pending_and_one_without_deliveries_ignored(
    database: Database, store: Store
) -> None:
    pending = await record(store, "routed", routes=("a", "b"))
    ignored = await record(store, "unrouted", routes=(), ignored_reason="no route matched")

    assert await stored_state(database, pending.event.id) is EventState.PENDING
    assert await stored_state(database, ignored.event.id) is EventState.IGNORED


async def test_the_state_follows_each_attempt_and_replay(
    database: Database, store: Store, history: History
) -> None:
    """pending -> (a retry) pending -> (one delivered, one dead) dead -> (the dead one
    replayed) pending -> delivered; after each step the column is what the deliveries
    sum up to."""
    event = await record(store, "two-routes", routes=("a", "b"), claim_for="w", lease_seconds=LONG)
    a, b = event.deliveries
    seen = []

    async def step() -> None:
        now = await stored_state(database, event.event.id)
        assert now is await summed_up(history, event.event.id)
        seen.append(now)

    retry = DeliveryUpdate(DeliveryState.PENDING, 503, "HTTP 503", next_attempt_at=store.clock())
    assert await complete(store, a, "w", retry)
    await step()
    [again] = await store.claim_due("w", a.connection, 1, LONG)
    assert await complete(store, again.delivery, "w", ending(DeliveryState.DELIVERED, 1.0))
    await step()
    assert await complete(store, b, "w", ending(DeliveryState.DEAD, 2.0))
    await step()
    await history.replay(b.id)
    await step()
    [replayed] = await store.claim_due("w", b.connection, 1, LONG)
    assert await complete(store, replayed.delivery, "w", ending(DeliveryState.DELIVERED, 3.0))
    await step()
    await history.replay(b.id, new_run=True)
    await step()

    assert seen == [
        EventState.PENDING,
        EventState.PENDING,
        EventState.DEAD,
        EventState.PENDING,
        EventState.DELIVERED,
        EventState.PENDING,
    ]


async def test_an_attempt_whose_lease_was_lost_leaves_the_state_alone(
    database: Database, store: Store
) -> None:
    event = await record(store, "taken-over", claim_for="first", lease_seconds=LONG)
    [delivery] = event.deliveries

    applied = await complete(store, delivery, "someone-else", ending(DeliveryState.DEAD, 1.0))

    assert not applied
    assert await stored_state(database, event.event.id) is EventState.PENDING


async def test_the_upgrade_from_schema_3_fills_in_every_event_state(database_url: str) -> None:
    async with opened(database_url) as database:
        store = Store(database)
        made = {
            EventState.PENDING: await record(store, "pending"),
            EventState.DELIVERED: await finished(store, DeliveryState.DELIVERED),
            EventState.DEAD: await finished(store, DeliveryState.DEAD),
            EventState.IGNORED: await record(store, "ignored", routes=()),
        }

        def back_to_3(conn: object) -> None:
            for sql in (
                "DROP INDEX events_state_received",
                "DROP INDEX events_table_received",
                "DROP INDEX events_received",
                "CREATE INDEX ix_events_received_at ON events (received_at)",
                "ALTER TABLE events DROP COLUMN state",
                "UPDATE bridge_meta SET value = '3' WHERE key = 'schema_version'",
            ):
                conn.execute(text(sql))  # type: ignore[attr-defined]

        await database.run(back_to_3)
    async with opened(database_url) as upgraded:
        version = await upgraded.run(
            lambda conn: conn.scalar(
                text("SELECT value FROM bridge_meta WHERE key = 'schema_version'")
            )
        )
        states = {state: await stored_state(upgraded, r.event.id) for state, r in made.items()}
        listed = {
            state: [e.id for e, _ in await History(upgraded).list_events(state=state)]
            for state in made
        }

    assert version == str(SCHEMA_VERSION)
    assert states == {state: state for state in made}
    assert listed == {state: [r.event.id] for state, r in made.items()}

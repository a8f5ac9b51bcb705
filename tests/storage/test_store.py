"""The delivery path's store (app/storage/store.py) on SQLite and PostgreSQL: ingest exactly once,
claims, leases and their fencing, group commit, schema, durability, locks, failures."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import Durability
from app.errors import StoreUnavailable
from app.storage.database import APPLICATION_NAME, Database, _Writer, display_url
from app.storage.history import History
from app.storage.records import (
    DROP_IN_ROUTE,
    AttemptRecord,
    DeliveryState,
    DeliveryStillPending,
    DeliveryUpdate,
    NewDelivery,
    NewEvent,
    Recorded,
)
from app.storage.schema import SCHEMA_VERSION, deliveries, events, meta
from app.storage.store import Store
from tests.support.stores import (
    CONNECTION,
    EXPIRED,
    LONG,
    complete,
    delivery,
    ending,
    finished,
    open_store,
    record,
    rows,
    set_columns,
)
from tests.support.waiting import ManualClock
from tools.localprefect import free_port

# Tests taking database_url (or store) run on a SQLite file and on a fresh PostgreSQL
# database; those taking db_path or postgres_url run on that one only. The store's time
# is a ManualClock, moved by hand.
pytestmark = [pytest.mark.anyio, pytest.mark.every_database]


def url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "bridge.db"


async def probed_at(store: Store) -> float:
    """The time the last readiness probe committed, read raw through ``store``."""
    query = select(meta.c.value).where(meta.c.key == "ready_probe")
    [(value,)] = await store.database.run(lambda conn: conn.execute(query).all())
    return float(value)


# -- ingest -----------------------------------------------------------------------------


async def test_an_event_and_its_deliveries_are_stored_together(
    store: Store, history: History, clock: ManualClock
) -> None:
    recorded = await record(store, "exec-1", routes=("a", "b"), payload={"rows": 1520})

    assert recorded.created
    assert recorded.event.execution_id == "exec-1"
    assert recorded.event.payload == {"rows": 1520}
    assert recorded.event.received_at == clock()
    assert [d.route for d in recorded.deliveries] == ["a", "b"]
    assert {d.event_id for d in recorded.deliveries} == {recorded.event.id}
    assert {(d.state, d.attempts, d.lease_owner) for d in recorded.deliveries} == {
        (DeliveryState.PENDING, 0, None)
    }
    assert {
        (d.created_at, d.window_started_at, d.next_attempt_at) for d in recorded.deliveries
    } == {(clock(), clock(), clock())}
    stored = await history.get_event(recorded.event.id)
    assert stored == (recorded.event, recorded.deliveries)


async def test_a_repeated_execution_id_returns_the_earlier_event_and_stores_nothing(
    store: Store, clock: ManualClock
) -> None:
    first = await record(store, "exec-1", routes=("a", "b"), payload={"first": True})
    clock.advance(5)

    again = await record(
        store, "exec-1", routes=("a", "b", "c"), payload={"first": False}, claim_for="w"
    )

    assert not again.created
    assert again.event == first.event
    assert again.deliveries == first.deliveries
    assert await rows(store.database, events) == 1
    assert await rows(store.database, deliveries) == 2


async def test_concurrent_duplicates_across_two_stores_make_exactly_one_event(
    database_url: str, clock: ManualClock
) -> None:
    one = await open_store(database_url, clock=clock)
    two = await open_store(database_url, clock=clock)
    try:
        results = await asyncio.gather(
            *(record(one if i % 2 else two, "exec-dup", routes=("a", "b")) for i in range(20))
        )
        assert [r.created for r in results].count(True) == 1
        [created] = [r for r in results if r.created]
        assert {r.event.id for r in results} == {created.event.id}
        assert {tuple(d.id for d in r.deliveries) for r in results} == {
            tuple(d.id for d in created.deliveries)
        }
        assert await rows(one.database, events) == 1
        assert await rows(two.database, deliveries) == 2
    finally:
        await one.database.close()
        await two.database.close()


async def test_text_postgresql_refuses_and_long_keys_are_stored_all_the_same(
    store: Store, history: History, clock: ManualClock
) -> None:
    """NUL is valid in JSON strings but not in PostgreSQL text; keys run up to 400
    characters (Prefect-shaped requests). Neither may turn an event into a 503."""
    long_key = "k" * 400
    recorded = await record(store, long_key, table_name="orders\x00v2", job_id="job\x00")

    stored = await history.get_event(recorded.event.id)
    assert stored is not None
    assert stored[0].execution_id == long_key
    assert stored[0].table_name in ("orders\x00v2", "orders\ufffdv2")  # SQLite, PostgreSQL
    assert stored[1][0].idempotency_key == f"{long_key}:main"
    assert not (await record(store, long_key)).created
    [d] = recorded.deliveries
    attempt = AttemptRecord(
        id=0,
        delivery_id=d.id,
        number=1,
        started_at=clock(),
        duration_ms=1.0,
        outcome="transient",
        status_code=502,
        error="bad gateway\x00",
        response_excerpt="<html>\x00</html>",
        retry_in=1.0,
    )
    retry = DeliveryUpdate(
        DeliveryState.PENDING, 502, "bad gateway\x00", next_attempt_at=clock() + 1.0
    )
    # Not held by "nobody": the attempt is recorded, the update is not applied.
    assert await store.complete_attempt(attempt, retry, "nobody") is False
    [stored_attempt] = await history.attempts_of([d.id])
    assert stored_attempt.error in ("bad gateway\x00", "bad gateway\ufffd")
    assert stored_attempt.response_excerpt in ("<html>\x00</html>", "<html>\ufffd</html>")
    assert await delivery(history, d.id) == d


async def test_stores_opened_at_once_create_the_schema_once(
    database_url: str, clock: ManualClock
) -> None:
    """Replicas starting together: each waits for the one creating the schema (an
    advisory lock on PostgreSQL, BEGIN IMMEDIATE on SQLite), then finds it current."""
    opening = await asyncio.gather(
        *(open_store(database_url, clock=clock) for _ in range(4)), return_exceptions=True
    )
    stores = [s for s in opening if isinstance(s, Store)]
    try:
        assert len(stores) == 4, [e for e in opening if not isinstance(e, Store)]
        recorded = await record(stores[0], "exec-1")
        found = [await History(s.database, clock).get_event(recorded.event.id) for s in stores]
        assert found == [(recorded.event, recorded.deliveries)] * 4
        query = select(meta.c.value).where(meta.c.key == "schema_version")
        versions = await stores[1].database.run(lambda conn: conn.execute(query).all())
        assert versions == [(str(SCHEMA_VERSION),)]
    finally:
        for s in stores:
            await s.database.close()


async def test_a_new_sqlite_file_being_written_elsewhere_is_waited_for(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Switching a new file to WAL needs its exclusive lock, and SQLite answers "locked"
    at once, without its busy handler, while another connection holds the write lock (a
    replica starting on the same file). Opening waits for it instead."""
    path = tmp_path / "bridge.db"
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        opening = asyncio.create_task(open_store(url(path), clock=clock))
        # Refused "locked" (by SQLite's busy handler, then by the switch to WAL, which
        # retries) and still waiting, not failed: its lock timeout is 5 s.
        await asyncio.sleep(0.5)
        assert not opening.done(), opening.exception()
        other.execute("COMMIT")
        store = await opening
    finally:
        other.close()
    try:
        await store.check_writable()
        assert await History(store.database, clock).pending_summary() == {}
    finally:
        await store.database.close()


async def test_readiness_probes_of_replicas_at_once_all_succeed_and_are_committed(
    database_url: str, clock: ManualClock
) -> None:
    """Each probe commits a real write, an upsert of one row: probes of several replicas
    at once neither collide on its key nor fail, and the row carries a probe's time."""
    other_clock = ManualClock(clock() + 7.25)
    one = await open_store(database_url, clock=clock)
    two = await open_store(database_url, clock=other_clock)
    try:
        outcomes = await asyncio.gather(
            *(s.check_writable() for s in (one, two) * 10), return_exceptions=True
        )
        assert outcomes == [None] * 20
        # Read through each store's own connection: what the other wrote is committed.
        assert await probed_at(one) == await probed_at(two)
        assert await probed_at(one) in (clock(), other_clock())

        other_clock.advance(60)
        await two.check_writable()
        assert await probed_at(one) == other_clock()
        clock.advance(120)
        await one.check_writable()
        assert await probed_at(two) == clock()
    finally:
        await one.database.close()
        await two.database.close()


async def test_stores_claiming_at_once_take_each_due_delivery_once(
    database_url: str, clock: ManualClock
) -> None:
    """Replicas polling together split the due deliveries between them (PostgreSQL:
    FOR UPDATE SKIP LOCKED; SQLite: one writer at a time)."""
    stores = [await open_store(database_url, clock=clock) for _ in range(3)]
    try:
        recorded = [await record(stores[0]) for _ in range(60)]

        async def drain(s: Store, owner: str) -> list[str]:
            taken: list[str] = []
            while claims := await s.claim_due(owner, CONNECTION, 4, LONG):
                taken += [c.delivery.id for c in claims]
            return taken

        taken = await asyncio.gather(*(drain(s, f"replica-{i}") for i, s in enumerate(stores)))

        everything = [i for t in taken for i in t]
        assert sorted(everything) == sorted(r.deliveries[0].id for r in recorded)
        assert len(set(everything)) == len(everything) == 60
        history = History(stores[0].database, clock)
        for owner, ids in enumerate(taken):
            for delivery_id in ids[:3]:
                found = await delivery(history, delivery_id)
                assert (found.lease_owner, found.attempts) == (f"replica-{owner}", 1)
    finally:
        for s in stores:
            await s.database.close()


# -- leases -----------------------------------------------------------------------------


async def test_deliveries_claimed_at_insert_are_held_until_their_lease_runs_out(
    store: Store, clock: ManualClock
) -> None:
    lease = 30.0
    recorded = await record(store, routes=("a", "b"), claim_for="webhook", lease_seconds=lease)
    assert {(d.lease_owner, d.attempts, d.lease_expires_at) for d in recorded.deliveries} == {
        ("webhook", 1, clock() + lease)
    }

    assert await store.claim_due("loop", CONNECTION, 10, LONG) == []
    clock.advance(lease - 0.001)
    assert await store.claim_due("loop", CONNECTION, 10, LONG) == []

    clock.advance(0.002)  # the lease running out is the behaviour under test
    taken = await store.claim_due("loop", CONNECTION, 10, LONG)
    assert sorted(c.delivery.id for c in taken) == sorted(d.id for d in recorded.deliveries)
    assert {(c.delivery.lease_owner, c.delivery.attempts) for c in taken} == {("loop", 2)}
    assert {c.delivery.lease_expires_at for c in taken} == {clock() + LONG}
    assert all(c.event == recorded.event for c in taken)


async def test_claims_take_the_oldest_due_deliveries_of_one_connection_first(
    store: Store, clock: ManualClock
) -> None:
    now = clock()
    # (name, connection, next_attempt_at, created_at) relative to now; all pending
    layout = [
        ("third", CONNECTION, -10.0, -50.0),
        ("first", CONNECTION, -30.0, -5.0),
        ("second-newer", CONNECTION, -20.0, -30.0),  # stored first, yet created later
        ("second-older", CONNECTION, -20.0, -40.0),
        ("fourth", CONNECTION, -1.0, -60.0),
        ("not-yet-due", CONNECTION, +30.0, -90.0),
        ("other-connection", "elsewhere", -90.0, -90.0),
    ]
    ids: dict[str, str] = {}
    for name, connection, due_in, created in layout:
        [d] = (await record(store, name, connection=connection)).deliveries
        await set_columns(
            store.database, deliveries, d.id, next_attempt_at=now + due_in, created_at=now + created
        )
        ids[d.id] = name
    for state in (DeliveryState.DELIVERED, DeliveryState.DEAD):
        [d] = (await finished(store, state)).deliveries
        await set_columns(store.database, deliveries, d.id, next_attempt_at=now - 100)

    first_two = await store.claim_due("loop", CONNECTION, 2, LONG)
    rest = await store.claim_due("loop", CONNECTION, 10, LONG)

    assert [ids[c.delivery.id] for c in first_two] == ["first", "second-older"]
    assert [ids[c.delivery.id] for c in rest] == ["second-newer", "third", "fourth"]
    assert {(c.delivery.attempts, c.delivery.lease_owner) for c in first_two + rest} == {
        (1, "loop")
    }
    assert await store.claim_due("loop", CONNECTION, 10, LONG) == []
    assert await store.claim_due("loop", CONNECTION, 0, LONG) == []
    [elsewhere] = await store.claim_due("loop", "elsewhere", 10, LONG)
    assert ids[elsewhere.delivery.id] == "other-connection"
    clock.advance(31)  # still within the leases taken above
    [later] = await store.claim_due("loop", CONNECTION, 10, LONG)
    assert ids[later.delivery.id] == "not-yet-due"


async def test_an_attempt_updates_its_delivery_only_while_its_lease_is_held(
    store: Store, history: History, clock: ManualClock
) -> None:
    """Fencing: a holder whose lease ran out and was taken over records its attempt, but
    the delivery is left to the new holder."""
    recorded = await record(store, claim_for="stalled", lease_seconds=EXPIRED)
    [stale] = recorded.deliveries
    [takeover] = await store.claim_due("fresh", CONNECTION, 10, LONG)

    lost = await complete(
        store, stale, "stalled", ending(DeliveryState.DELIVERED, clock(), flow_run_id="run-1")
    )

    assert lost is False
    after_loss = await delivery(history, stale.id)
    assert after_loss == takeover.delivery
    assert [(a.number, a.outcome) for a in await history.attempts_of([stale.id])] == [
        (1, "delivered")
    ]

    clock.advance(3)
    fresh = ending(DeliveryState.DELIVERED, clock(), flow_run_id="run-fresh")
    held = await complete(store, takeover.delivery, "fresh", fresh)

    assert held is True
    done = await delivery(history, stale.id)
    assert (done.state, done.flow_run_id, done.lease_owner, done.lease_expires_at) == (
        DeliveryState.DELIVERED,
        "run-fresh",
        None,
        None,
    )
    assert done.finished_at == clock()
    assert done == fresh.applied_to(takeover.delivery)
    assert [a.number for a in await history.attempts_of([stale.id])] == [1, 2]


async def test_an_expired_lease_nobody_took_over_still_lets_its_holder_complete(
    store: Store, history: History, clock: ManualClock
) -> None:
    [d] = (await record(store, claim_for="slow", lease_seconds=EXPIRED)).deliveries

    assert await complete(
        store, d, "slow", ending(DeliveryState.DELIVERED, clock(), flow_run_id="run-1")
    )
    assert (await delivery(history, d.id)).state is DeliveryState.DELIVERED


async def test_renewing_extends_only_a_lease_still_held_on_a_pending_delivery(
    store: Store, history: History, clock: ManualClock
) -> None:
    [held] = (await record(store, claim_for="me", lease_seconds=1.0)).deliveries
    [lost] = (await record(store, claim_for="me", lease_seconds=EXPIRED)).deliveries
    [taken] = await store.claim_due("other", CONNECTION, 10, LONG)
    [done] = (await finished(store, DeliveryState.DELIVERED)).deliveries
    clock.advance(0.5)

    assert await store.renew(held.id, "me", LONG) is True
    assert await store.renew(lost.id, "me", LONG) is False  # taken over: not ours to send
    assert await store.renew(done.id, "worker", LONG) is False
    assert taken.delivery.id == lost.id
    renewed = await delivery(history, held.id)
    assert renewed.lease_owner == "me"
    assert renewed.lease_expires_at == clock() + LONG
    assert (await delivery(history, lost.id)).lease_owner == "other"
    assert (await delivery(history, done.id)).lease_owner is None


@pytest.mark.parametrize(("untried", "attempts_after"), [(False, 1), (True, 0)])
async def test_a_released_lease_can_be_claimed_again_at_once(
    store: Store, history: History, untried: bool, attempts_after: int
) -> None:
    """Released leases (on shutdown, or a delivery not tried after all) are given back
    to their holder's claims only; ``untried`` also returns the attempt the claim counted."""
    recorded = await record(store, routes=("a", "b"))
    claims = await store.claim_due("leaving", CONNECTION, 10, LONG)
    [a, b] = sorted(c.delivery.id for c in claims)

    await store.release("someone-else", [a, b], untried=untried)
    assert await store.claim_due("staying", CONNECTION, 10, LONG) == []

    await store.release("leaving", [a], untried=untried)
    await store.release("leaving", [])

    released = await delivery(history, a)
    assert (released.lease_owner, released.lease_expires_at) == (None, None)
    assert released.attempts == attempts_after
    assert (await delivery(history, b)).lease_owner == "leaving"
    [again] = await store.claim_due("staying", CONNECTION, 10, LONG)
    assert again.delivery.id == a
    assert again.delivery.attempts == attempts_after + 1
    assert again.event == recorded.event


async def test_resuming_a_connection_makes_every_pending_delivery_of_it_due_now(
    store: Store, history: History, clock: ManualClock
) -> None:
    later = clock() + 3600
    waiting = []
    for _ in range(3):
        [d] = (await record(store)).deliveries
        await set_columns(store.database, deliveries, d.id, next_attempt_at=later)
        waiting.append(d.id)
    [due] = (await record(store)).deliveries
    [done] = (await finished(store, DeliveryState.DELIVERED)).deliveries
    await set_columns(store.database, deliveries, done.id, next_attempt_at=later)
    [elsewhere] = (await record(store, connection="elsewhere")).deliveries
    await set_columns(store.database, deliveries, elsewhere.id, next_attempt_at=later)
    clock.advance(10)

    assert await store.resume(CONNECTION) == 3

    claimed = await store.claim_due("loop", CONNECTION, 10, LONG)
    assert sorted(c.delivery.id for c in claimed) == sorted([*waiting, due.id])
    assert claimed[0].delivery.id == due.id  # due before the resumed ones became due
    assert {c.delivery.id: c.delivery.next_attempt_at for c in claimed} == {
        due.id: due.next_attempt_at,
        **dict.fromkeys(waiting, clock()),
    }
    assert await store.claim_due("loop", "elsewhere", 10, LONG) == []
    assert (await delivery(history, elsewhere.id)).next_attempt_at == later
    assert (await delivery(history, done.id)).state is DeliveryState.DELIVERED
    assert await store.resume(CONNECTION) == 0


# -- group commit -----------------------------------------------------------------------


async def test_a_failing_operation_among_many_at_once_fails_alone(
    database_url: str, clock: ManualClock
) -> None:
    """SQLite commits what arrives together in one transaction: a refused replay in the
    middle of a burst of new events is its caller's error, and every event is stored."""
    store = await open_store(database_url, clock=clock)
    history = History(store.database, clock)
    try:
        [pending] = (await record(store)).deliveries
        ids = [uuid.uuid4().hex for _ in range(40)]
        done = await asyncio.gather(
            *(record(store, i) for i in ids[:20]),
            history.replay(pending.id),
            *(record(store, i) for i in ids[20:]),
            return_exceptions=True,
        )
        refused = done.pop(20)
        assert isinstance(refused, DeliveryStillPending), refused
        assert refused.delivery_id == pending.id
        assert [r.created for r in done if isinstance(r, Recorded)] == [True] * 40, done
        assert await rows(store.database, events) == 41
    finally:
        await store.database.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await history.pending_summary()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.check_writable()


async def test_a_group_is_committed_once_its_works_have_run_for_its_time_bound(
    tmp_path: Path,
) -> None:
    """Works queued together share a commit only up to the group's time bound: the first
    work's caller never waits for a whole queue of slow ones. Order is kept across groups."""
    database = await Database.open(f"sqlite:///{tmp_path / 'bridge.db'}")
    transactions: list[Connection] = []  # each group's transaction runs on its own

    def slow(conn: Connection) -> int:
        transactions.append(conn)
        time.sleep(_Writer.GROUP_SECONDS / 2)  # two of them fill the bound
        return len(transactions)

    try:
        done = await asyncio.gather(*(database.run(slow) for _ in range(8)))
    finally:
        await database.close()
    assert done == list(range(1, 9))
    sizes = Counter(id(conn) for conn in transactions).values()
    assert max(sizes) <= 2, sizes
    assert len(sizes) >= 4, sizes


# -- schema and durability --------------------------------------------------------------


async def test_reopening_a_database_keeps_its_events(database_url: str, clock: ManualClock) -> None:
    first = await open_store(database_url, clock=clock)
    try:
        recorded = await record(first, "exec-1")
    finally:
        await first.database.close()

    second = await open_store(database_url, clock=clock)
    try:
        assert await History(second.database, clock).get_event(recorded.event.id) == (
            recorded.event,
            recorded.deliveries,
        )
        assert not (await record(second, "exec-1")).created
    finally:
        await second.database.close()


async def test_a_database_from_a_newer_release_refuses_to_open(
    database_url: str, clock: ManualClock
) -> None:
    store = await open_store(database_url, clock=clock)
    newer = SCHEMA_VERSION + 1
    try:
        newer_version = update(meta).where(meta.c.key == "schema_version")
        await store.database.run(lambda conn: conn.execute(newer_version.values(value=str(newer))))
    finally:
        await store.database.close()

    with pytest.raises(StoreUnavailable) as refused:
        await open_store(database_url, clock=clock)

    message = str(refused.value)
    assert f"schema version {newer}" in message
    assert f"({SCHEMA_VERSION})" in message


async def test_a_version_2_database_is_upgraded_in_place(
    database_url: str, clock: ManualClock
) -> None:
    """Version 2 reset a delivery's attempts on a replay (they were numbered from 1 again),
    listed deliveries by route name, and keyed a drop-in call ``flow:<id>:<key>``, which
    an Erathos execution id may also be."""
    flow_id, key = str(uuid.uuid4()), uuid.uuid4().hex
    store = await open_store(database_url, clock=clock)
    try:
        [replayed] = (await finished(store, DeliveryState.DEAD)).deliveries
        for _ in range(2):  # as version 2 replayed: attempts back to 0, so each one is 1
            await set_columns(store.database, deliveries, replayed.id, attempts=0, state="pending")
            [claim] = await store.claim_due("w", CONNECTION, 10, LONG)
            assert await complete(store, claim.delivery, "w", ending(DeliveryState.DEAD, clock()))
        dropped_in = await store.record_event(
            NewEvent(
                execution_id=f"flow:{flow_id}:{key}",
                payload={DROP_IN_ROUTE: {"path": "flow_runs/", "body": {"flow_id": flow_id}}},
                deliveries=[NewDelivery(DROP_IN_ROUTE, CONNECTION, key)],
            )
        )
        shaped_alike = await record(store, f"flow:{flow_id}:{uuid.uuid4().hex}")
        routed = await record(store, routes=("zeta", "prefect-event", "alpha"))

        def as_version_2(conn: Connection) -> None:
            for column in ("ordinal", "attempts_before_replay"):
                conn.execute(text(f"ALTER TABLE deliveries DROP COLUMN {column}"))
            conn.execute(update(meta).where(meta.c.key == "schema_version").values(value="2"))

        await store.database.run(as_version_2)
    finally:
        await store.database.close()

    upgraded = await open_store(database_url, clock=clock)
    try:
        history = History(upgraded.database, clock)
        found = await history.get_event(dropped_in.event.id)
        alike = await history.get_event(shaped_alike.event.id)
        listed = await history.get_event(routed.event.id)
        again = await delivery(history, replayed.id)
        numbers = [a.number for a in await history.attempts_of([replayed.id])]
    finally:
        await upgraded.database.close()

    assert found is not None
    assert alike is not None
    assert listed is not None
    assert found[0].execution_id == f"drop-in/flow/{flow_id}/{key}"
    assert alike[0].execution_id == shaped_alike.event.execution_id  # an Erathos event's
    assert [d.route for d in listed[1]] == ["alpha", "zeta", "prefect-event"]
    assert numbers == [1, 2, 3]
    assert (again.attempts, again.budget_used) == (3, 1)


def test_a_database_url_is_shown_without_its_password() -> None:
    shown = display_url("postgresql://bridge:s3cret@db:5432/bridge")

    assert "s3cret" not in shown
    assert shown == "postgresql://bridge:***@db:5432/bridge"
    assert display_url("sqlite:///./data/bridge.db") == "sqlite:///./data/bridge.db"


# SQLite only: its journal, synchronous level and file lock.


@pytest.mark.parametrize(
    ("durability", "synchronous"), [(Durability.POWER, 2), (Durability.CRASH, 1)]
)
async def test_sqlite_durability_sets_synchronous_on_a_wal_journal(
    db_path: Path, clock: ManualClock, durability: Durability, synchronous: int
) -> None:
    store = await open_store(url(db_path), clock=clock, durability=durability)
    try:
        found, journal = await store.database.run(
            lambda conn: (
                conn.exec_driver_sql("PRAGMA synchronous").scalar(),
                conn.exec_driver_sql("PRAGMA journal_mode").scalar(),
            )
        )
    finally:
        await store.database.close()

    assert found == synchronous
    assert journal == "wal"


async def test_readiness_fails_while_another_connection_holds_the_sqlite_write_lock(
    db_path: Path, clock: ManualClock
) -> None:
    store = await open_store(url(db_path), clock=clock, lock_timeout=0.2)
    try:
        await store.check_writable()
        with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")
            clock.advance(1)
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.check_writable()
            other.execute("ROLLBACK")
        assert await probed_at(store) == clock() - 1  # the refused probe left nothing
        await store.check_writable()
        assert await probed_at(store) == clock()
    finally:
        await store.database.close()


# PostgreSQL only: what the service asks of its sessions, its locks, its connections.


@pytest.mark.parametrize("durability", list(Durability))
async def test_postgresql_sessions_commit_synchronously_with_the_lock_timeouts(
    postgres_url: str, clock: ManualClock, durability: Durability
) -> None:
    """Both durabilities mean the server's own durability: a commit is in its WAL before
    the webhook answers (synchronous_commit=on, whatever the server's default)."""
    store = await open_store(
        postgres_url, clock=clock, durability=durability, lock_timeout=1.5, pool_size=3
    )
    try:
        names = (
            "synchronous_commit",
            "lock_timeout",
            "statement_timeout",
            "application_name",
            "transaction_isolation",
        )
        shown = await store.database.run(
            lambda conn: {name: conn.execute(text(f"SHOW {name}")).scalar() for name in names}
        )
        status = store.database.engine.pool.status()
    finally:
        await store.database.close()

    assert shown == {
        "synchronous_commit": "on",
        "lock_timeout": "1500ms",
        "statement_timeout": "3s",
        "application_name": APPLICATION_NAME,
        "transaction_isolation": "read committed",
    }
    assert "Pool size: 3" in status


async def test_a_write_waiting_on_a_postgresql_lock_fails_within_the_lock_timeout(
    postgres_url: str, clock: ManualClock
) -> None:
    store = await open_store(postgres_url, clock=clock, lock_timeout=0.3)
    other = create_async_engine(postgres_url.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        async with other.begin() as conn:
            await conn.execute(text("LOCK TABLE events IN ACCESS EXCLUSIVE MODE"))
            # The lock timeout is the server's to measure, in real time.
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=r"lock timeout|statement timeout"):
                await record(store, "exec-locked")
            waited = time.monotonic() - started
        recorded = await record(store, "exec-locked")
    finally:
        await other.dispose()
        await store.database.close()

    assert 0.25 <= waited < 3.0
    assert recorded.created  # nothing of the refused attempt was kept


async def test_a_postgresql_store_replaces_connections_the_server_dropped(
    postgres_url: str, clock: ManualClock
) -> None:
    """What a server restart does to the pool: every connection is gone at once. The
    next transaction notices at checkout (pre-ping) and opens a new one."""
    store = await open_store(postgres_url, clock=clock)
    history = History(store.database, clock)
    other = create_async_engine(postgres_url.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        first = await record(store)
        async with other.connect() as conn:
            killed = (
                await conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = :name AND datname = current_database()"
                    ),
                    {"name": APPLICATION_NAME},
                )
            ).scalar()
        second = await record(store)
        assert await history.get_event(first.event.id) is not None
        assert await history.get_event(second.event.id) is not None
    finally:
        await other.dispose()
        await store.database.close()

    assert killed is not None
    assert killed >= 1


async def test_a_postgresql_server_that_is_not_there_is_store_unavailable() -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/bridge"

    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"(?i)refused|connect"):
        await open_store(nowhere, pool_timeout=2)

    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("scheme", "query"),
    [("postgresql", ""), ("postgres", "?sslmode=disable"), ("postgresql+asyncpg", "?ssl=disable")],
)
async def test_every_spelling_of_a_postgresql_url_opens_the_store(
    postgres_url: str, clock: ManualClock, scheme: str, query: str
) -> None:
    spelled = scheme + postgres_url.removeprefix("postgresql") + query

    store = await open_store(spelled, clock=clock)
    try:
        assert store.database.postgres
        assert (await record(store)).created
    finally:
        await store.database.close()

"""The durable store against real databases: ingest exactly once, leases and their
fencing, release, resume, replay, listing, pruning, schema and durability settings.

Every test that takes ``database_url`` (or ``store``) runs twice, on a SQLite file and
on a fresh PostgreSQL database. The tests of SQLite's own settings and locks take a
file path instead and run on SQLite only; PostgreSQL has its own equivalents below.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, func, select, text, update
from sqlalchemy.ext.asyncio import create_async_engine

from app.database import APPLICATION_NAME, attempts, deliveries, display_url, events, meta
from app.settings import Durability
from app.store import (
    DEAD,
    DELIVERED,
    PENDING,
    SCHEMA_VERSION,
    DeliveryRecord,
    EventRecord,
    NewDelivery,
    Recorded,
    Store,
    StoreUnavailable,
)
from tools.localprefect import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.every_database]

CONNECTION = "prefect"
EXPIRED = -1.0  # a lease that has run out at birth, so no test waits for one
LONG = 60.0  # a lease that outlives any test


def url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "bridge.db"


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(database_url)
    try:
        yield opened
    finally:
        await opened.close()


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
    return await store.record_event(
        execution_id,
        payload if payload is not None else {"execution_id": execution_id},
        job_id=job_id,
        schema_name="raw_shop",
        table_name=table_name,
        status="FINISHED",
        new_deliveries=[NewDelivery(r, connection, f"{execution_id}:{r}") for r in routes],
        ignored_reason=ignored_reason,
        claim_for=claim_for,
        lease_seconds=lease_seconds,
    )


async def complete(
    store: Store, delivery: DeliveryRecord, owner: str, outcome: str = "delivered", **changes: Any
) -> bool:
    """Record an attempt of a held delivery and apply ``changes``."""
    return await store.complete_attempt(
        delivery,
        owner,
        started_at=time.time(),
        duration_ms=12.5,
        outcome=outcome,
        status_code=201 if outcome == "delivered" else 503,
        error=None if outcome == "delivered" else "HTTP 503",
        response_excerpt=None,
        retry_in=None,
        changes=changes,
    )


async def finished(store: Store, state: str, **kwargs: Any) -> Recorded:
    """An event whose single delivery was tried once and ended ``state``."""
    recorded = await record(store, claim_for="worker", lease_seconds=LONG, **kwargs)
    [delivery] = recorded.deliveries
    outcome = "delivered" if state == DELIVERED else "permanent"
    assert await complete(store, delivery, "worker", outcome, state=state, finished_at=time.time())
    return recorded


async def rows(store: Store, table: Table) -> int:
    count = select(func.count()).select_from(table)
    return await store.run(lambda conn: int(conn.scalar(count) or 0))


async def set_columns(store: Store, table: Table, row_id: str, **values: Any) -> None:
    """Arrange a row directly (times the store would otherwise take from the clock)."""
    arranged = update(table).where(table.c.id == row_id).values(**values)
    await store.run(lambda conn: conn.execute(arranged))


async def delivery(store: Store, delivery_id: str) -> DeliveryRecord:
    found = await store.get_delivery(delivery_id)
    assert found is not None
    return found


# -- ingest -----------------------------------------------------------------------------


async def test_an_event_and_its_deliveries_are_stored_together(store: Store) -> None:
    recorded = await record(store, "exec-1", routes=("a", "b"), payload={"rows": 1520})

    assert recorded.created
    assert recorded.event.execution_id == "exec-1"
    assert recorded.event.payload == {"rows": 1520}
    assert [d.route for d in recorded.deliveries] == ["a", "b"]
    assert {d.event_id for d in recorded.deliveries} == {recorded.event.id}
    assert {(d.state, d.attempts, d.lease_owner) for d in recorded.deliveries} == {
        (PENDING, 0, None)
    }
    stored = await store.get_event(recorded.event.id)
    assert stored == (recorded.event, recorded.deliveries)


async def test_a_repeated_execution_id_returns_the_earlier_event_and_stores_nothing(
    store: Store,
) -> None:
    first = await record(store, "exec-1", routes=("a", "b"), payload={"first": True})

    again = await record(
        store, "exec-1", routes=("a", "b", "c"), payload={"first": False}, claim_for="w"
    )

    assert not again.created
    assert again.event == first.event
    assert again.deliveries == first.deliveries
    assert await rows(store, events) == 1
    assert await rows(store, deliveries) == 2


async def test_concurrent_duplicates_across_two_stores_make_exactly_one_event(
    database_url: str,
) -> None:
    one = await Store.open(database_url)
    two = await Store.open(database_url)
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
        assert await rows(one, events) == 1
        assert await rows(two, deliveries) == 2
    finally:
        await one.close()
        await two.close()


async def test_text_postgresql_refuses_and_long_keys_are_stored_all_the_same(
    store: Store,
) -> None:
    """NUL is valid in JSON strings but not in PostgreSQL text; keys run up to 400
    characters (Prefect-shaped requests). Neither may turn an event into a 503."""
    long_key = "k" * 400
    recorded = await record(store, long_key, table_name="orders\x00v2", job_id="job\x00")

    stored = await store.get_event(recorded.event.id)
    assert stored is not None
    assert stored[0].execution_id == long_key
    assert stored[0].table_name in ("orders\x00v2", "orders\ufffdv2")  # SQLite, PostgreSQL
    assert stored[1][0].idempotency_key == f"{long_key}:main"
    assert not (await record(store, long_key)).created
    [d] = recorded.deliveries
    assert (
        await store.complete_attempt(
            d,
            "nobody",
            started_at=time.time(),
            duration_ms=1.0,
            outcome="transient",
            status_code=502,
            error="bad gateway\x00",
            response_excerpt="<html>\x00</html>",
            retry_in=1.0,
            changes={"last_error": "bad gateway\x00"},
        )
        is False
    )  # not held by "nobody": recorded, not applied
    [attempt] = await store.attempts_of([d.id])
    assert attempt.error in ("bad gateway\x00", "bad gateway\ufffd")


async def test_stores_opened_at_once_create_the_schema_once(database_url: str) -> None:
    """Replicas starting together: each waits for the one creating the schema (an
    advisory lock on PostgreSQL, BEGIN IMMEDIATE on SQLite), then finds it current."""
    opened = await asyncio.gather(
        *(Store.open(database_url) for _ in range(4)), return_exceptions=True
    )
    stores = [s for s in opened if isinstance(s, Store)]
    try:
        assert len(stores) == 4, [e for e in opened if not isinstance(e, Store)]
        recorded = await record(stores[0], "exec-1")
        assert [await s.get_event(recorded.event.id) is not None for s in stores] == [True] * 4
        query = select(meta.c.value).where(meta.c.key == "schema_version")
        versions = await stores[1].run(lambda conn: conn.execute(query).all())
        assert versions == [(str(SCHEMA_VERSION),)]
    finally:
        for s in stores:
            await s.close()


async def test_a_new_sqlite_file_being_written_elsewhere_is_waited_for(tmp_path: Path) -> None:
    """Switching a new file to WAL needs its exclusive lock, and SQLite answers "locked"
    at once, without its busy handler, while another connection holds the write lock (a
    replica starting on the same file). Opening waits for it instead."""
    path = tmp_path / "bridge.db"
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        opening = asyncio.create_task(Store.open(f"sqlite:///{path}"))
        await asyncio.sleep(0.3)
        assert not opening.done(), opening.exception()
        other.execute("COMMIT")
        store = await opening
    finally:
        other.close()
    try:
        assert await store.pending_summary() == {}
    finally:
        await store.close()


async def test_readiness_probes_of_replicas_at_once_all_succeed(database_url: str) -> None:
    one, two = await Store.open(database_url), await Store.open(database_url)
    try:
        await asyncio.gather(*(s.check_writable() for s in (one, two) * 10))
    finally:
        await one.close()
        await two.close()


async def test_stores_claiming_at_once_take_each_due_delivery_once(database_url: str) -> None:
    """Replicas polling together split the due deliveries between them (PostgreSQL:
    FOR UPDATE SKIP LOCKED; SQLite: one writer at a time)."""
    stores = [await Store.open(database_url) for _ in range(3)]
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
        for owner, ids in enumerate(taken):
            for delivery_id in ids[:3]:
                found = await delivery(stores[0], delivery_id)
                assert (found.lease_owner, found.attempts) == (f"replica-{owner}", 1)
    finally:
        for s in stores:
            await s.close()


# -- leases -----------------------------------------------------------------------------


async def test_deliveries_claimed_at_insert_are_held_until_their_lease_runs_out(
    store: Store,
) -> None:
    recorded = await record(store, routes=("a", "b"), claim_for="webhook", lease_seconds=0.2)
    assert {(d.lease_owner, d.attempts) for d in recorded.deliveries} == {("webhook", 1)}

    assert await store.claim_due("loop", CONNECTION, 10, LONG) == []

    await asyncio.sleep(0.25)  # the lease running out is the behaviour under test
    taken = await store.claim_due("loop", CONNECTION, 10, LONG)
    assert sorted(c.delivery.id for c in taken) == sorted(d.id for d in recorded.deliveries)
    assert {(c.delivery.lease_owner, c.delivery.attempts) for c in taken} == {("loop", 2)}
    assert all(c.event == recorded.event for c in taken)


async def test_claim_due_leases_the_oldest_due_deliveries_of_one_connection(
    store: Store,
) -> None:
    now = time.time()
    # (name, connection, next_attempt_at, created_at) relative to now; all pending
    layout = [
        ("third", CONNECTION, -10.0, -50.0),
        ("first", CONNECTION, -30.0, -5.0),
        ("second-newer", CONNECTION, -20.0, -30.0),  # stored first, yet created later
        ("second-older", CONNECTION, -20.0, -40.0),
        ("fourth", CONNECTION, -1.0, -60.0),
        ("not-yet-due", CONNECTION, +60.0, -90.0),
        ("other-connection", "elsewhere", -90.0, -90.0),
    ]
    ids: dict[str, str] = {}
    for name, connection, due_in, created in layout:
        [d] = (await record(store, name, connection=connection)).deliveries
        await set_columns(
            store, deliveries, d.id, next_attempt_at=now + due_in, created_at=now + created
        )
        ids[d.id] = name
    for state in (DELIVERED, DEAD):
        [d] = (await finished(store, state)).deliveries
        await set_columns(store, deliveries, d.id, next_attempt_at=now - 100)

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


async def test_complete_attempt_is_fenced_by_the_lease(store: Store) -> None:
    recorded = await record(store, claim_for="stalled", lease_seconds=EXPIRED)
    [stale] = recorded.deliveries
    [takeover] = await store.claim_due("fresh", CONNECTION, 10, LONG)

    lost = await complete(store, stale, "stalled", state=DELIVERED, flow_run_id="run-stale")

    assert lost is False
    after_loss = await delivery(store, stale.id)
    assert after_loss == takeover.delivery
    assert [(a.number, a.outcome) for a in await store.attempts_of([stale.id])] == [
        (1, "delivered")
    ]

    held = await complete(
        store, takeover.delivery, "fresh", state=DELIVERED, flow_run_id="run-fresh"
    )

    assert held is True
    done = await delivery(store, stale.id)
    assert (done.state, done.flow_run_id, done.lease_owner, done.lease_expires_at) == (
        DELIVERED,
        "run-fresh",
        None,
        None,
    )
    assert [a.number for a in await store.attempts_of([stale.id])] == [1, 2]


async def test_an_expired_lease_nobody_took_over_still_lets_its_holder_complete(
    store: Store,
) -> None:
    [d] = (await record(store, claim_for="slow", lease_seconds=EXPIRED)).deliveries

    assert await complete(store, d, "slow", state=DELIVERED, flow_run_id="run-1")
    assert (await delivery(store, d.id)).state == DELIVERED


async def test_renew_extends_only_a_lease_still_held_on_a_pending_delivery(
    store: Store,
) -> None:
    [held] = (await record(store, claim_for="me", lease_seconds=1.0)).deliveries
    [lost] = (await record(store, claim_for="me", lease_seconds=EXPIRED)).deliveries
    [taken] = await store.claim_due("other", CONNECTION, 10, LONG)
    [done] = (await finished(store, DELIVERED)).deliveries
    before = time.time()

    assert await store.renew(held.id, "me", LONG) is True
    assert await store.renew(lost.id, "me", LONG) is False  # taken over: not ours to send
    assert await store.renew(done.id, "worker", LONG) is False
    assert taken.delivery.id == lost.id
    renewed = await delivery(store, held.id)
    assert renewed.lease_owner == "me"
    assert renewed.lease_expires_at is not None
    assert renewed.lease_expires_at >= before + LONG
    assert (await delivery(store, lost.id)).lease_owner == "other"


def test_a_database_url_is_shown_without_its_password() -> None:
    shown = display_url("postgresql://bridge:s3cret@db:5432/bridge")

    assert "s3cret" not in shown
    assert shown == "postgresql://bridge:***@db:5432/bridge"
    assert display_url("sqlite:///./data/bridge.db") == "sqlite:///./data/bridge.db"


@pytest.mark.parametrize(("untried", "attempts_after"), [(False, 1), (True, 0)])
async def test_release_gives_the_lease_back_at_once(
    store: Store, untried: bool, attempts_after: int
) -> None:
    recorded = await record(store, routes=("a", "b"))
    claims = await store.claim_due("leaving", CONNECTION, 10, LONG)
    [a, b] = sorted(c.delivery.id for c in claims)

    await store.release("someone-else", [a, b], untried=untried)
    assert await store.claim_due("staying", CONNECTION, 10, LONG) == []

    await store.release("leaving", [a], untried=untried)
    await store.release("leaving", [])

    released = await delivery(store, a)
    assert (released.lease_owner, released.lease_expires_at) == (None, None)
    assert released.attempts == attempts_after
    assert (await delivery(store, b)).lease_owner == "leaving"
    [again] = await store.claim_due("staying", CONNECTION, 10, LONG)
    assert again.delivery.id == a
    assert again.delivery.attempts == attempts_after + 1
    assert again.event == recorded.event


async def test_resume_makes_every_pending_delivery_of_a_connection_due_now(
    store: Store,
) -> None:
    later = time.time() + 3600
    waiting = []
    for _ in range(3):
        [d] = (await record(store)).deliveries
        await set_columns(store, deliveries, d.id, next_attempt_at=later)
        waiting.append(d.id)
    [due] = (await record(store)).deliveries
    [done] = (await finished(store, DELIVERED)).deliveries
    await set_columns(store, deliveries, done.id, next_attempt_at=later)
    [elsewhere] = (await record(store, connection="elsewhere")).deliveries
    await set_columns(store, deliveries, elsewhere.id, next_attempt_at=later)

    assert await store.resume(CONNECTION) == 3

    claimed = await store.claim_due("loop", CONNECTION, 10, LONG)
    assert sorted(c.delivery.id for c in claimed) == sorted([*waiting, due.id])
    assert await store.claim_due("loop", "elsewhere", 10, LONG) == []
    assert (await delivery(store, elsewhere.id)).next_attempt_at == later
    assert (await delivery(store, done.id)).state == DELIVERED
    assert await store.resume(CONNECTION) == 0


# -- replay -----------------------------------------------------------------------------

REPLAY_KEY = re.compile(r"^(?P<original>.+):replay-[0-9a-f]{8}$")


@pytest.mark.parametrize("state", [DEAD, DELIVERED])
@pytest.mark.parametrize("new_run", [False, True])
async def test_replay_makes_a_finished_delivery_pending_and_due_now(
    store: Store, state: str, new_run: bool
) -> None:
    [original] = (await finished(store, state)).deliveries
    await set_columns(store, deliveries, original.id, flow_run_id="run-1", flow_run_url="http://x")
    before = time.time()

    replayed = await store.replay(original.id, new_run=new_run)

    assert replayed == await delivery(store, original.id)
    assert replayed.state == PENDING
    assert replayed.attempts == 0
    assert before <= replayed.window_started_at <= time.time()
    assert before <= replayed.next_attempt_at <= time.time()
    assert (replayed.lease_owner, replayed.lease_expires_at, replayed.finished_at) == (
        None,
        None,
        None,
    )
    if new_run:
        match = REPLAY_KEY.match(replayed.idempotency_key)
        assert match is not None
        assert match["original"] == original.idempotency_key
        assert (replayed.flow_run_id, replayed.flow_run_url) == (None, None)
    else:
        assert replayed.idempotency_key == original.idempotency_key
        assert (replayed.flow_run_id, replayed.flow_run_url) == ("run-1", "http://x")
    [claim] = await store.claim_due("loop", CONNECTION, 10, LONG)
    assert claim.delivery.id == original.id


async def test_replaying_with_a_new_run_twice_derives_from_the_original_key(
    store: Store,
) -> None:
    [original] = (await finished(store, DELIVERED)).deliveries

    keys = []
    for _ in range(2):
        keys.append((await store.replay(original.id, new_run=True)).idempotency_key)
        [claim] = await store.claim_due("loop", CONNECTION, 10, LONG)
        assert await complete(store, claim.delivery, "loop", state=DELIVERED)

    assert keys[0] != keys[1]
    for key in keys:
        match = REPLAY_KEY.match(key)
        assert match is not None
        assert match["original"] == original.idempotency_key


async def test_replay_refuses_a_pending_delivery_and_an_unknown_one(store: Store) -> None:
    [pending] = (await record(store)).deliveries

    with pytest.raises(ValueError, match="still pending"):
        await store.replay(pending.id)
    with pytest.raises(LookupError):
        await store.replay(uuid.uuid4().hex)
    assert await delivery(store, pending.id) == pending


async def test_a_failing_operation_among_many_at_once_fails_alone(database_url: str) -> None:
    """SQLite commits what arrives together in one transaction: a refused replay in the
    middle of a burst of new events is its caller's error, and every event is stored."""
    opened = await Store.open(database_url)
    try:
        [pending] = (await record(opened)).deliveries
        ids = [uuid.uuid4().hex for _ in range(40)]
        done = await asyncio.gather(
            *(record(opened, i) for i in ids[:20]),
            opened.replay(pending.id),
            *(record(opened, i) for i in ids[20:]),
            return_exceptions=True,
        )
        refused = done.pop(20)
        assert isinstance(refused, ValueError), refused
        assert [r.created for r in done if isinstance(r, Recorded)] == [True] * 40, done
        assert await rows(opened, events) == 41
    finally:
        await opened.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await opened.pending_summary()


# -- listing ----------------------------------------------------------------------------


async def test_list_events_filters_by_state(store: Store) -> None:
    pending = await record(store, "pending")
    delivered = await finished(store, DELIVERED, execution_id="delivered")
    dead = await finished(store, DEAD, execution_id="dead")
    ignored = await record(store, "ignored", routes=(), ignored_reason="no route matched")
    mixed = await record(store, "delivered-and-dead", routes=("a", "b"), claim_for="w")
    a, b = mixed.deliveries
    assert await complete(store, a, "w", state=DELIVERED)
    assert await complete(store, b, "w", "permanent", state=DEAD)
    half = await record(store, "pending-and-dead", routes=("a", "b"), claim_for="w")
    assert await complete(store, half.deliveries[0], "w", "permanent", state=DEAD)

    expected = {
        "pending": [half, pending],
        "delivered": [delivered],
        "dead": [half, mixed, dead],
        "ignored": [ignored],
    }
    for state, wanted in expected.items():
        listed = await store.list_events(state=state)
        assert [e.id for e, _ in listed] == [r.event.id for r in wanted], state
    with pytest.raises(ValueError, match="state must be one of"):
        await store.list_events(state="lost")


async def test_list_events_filters_by_job_table_and_time(store: Store) -> None:
    first = (await record(store, "e1", job_id="job-a", table_name="orders")).event
    second = (await record(store, "e2", job_id="job-b", table_name="orders")).event
    third = (await record(store, "e3", job_id="job-a", table_name="customers")).event

    cases: list[tuple[dict[str, Any], list[EventRecord]]] = [
        ({}, [third, second, first]),
        ({"job_id": "job-a"}, [third, first]),
        ({"table_name": "orders"}, [second, first]),
        ({"job_id": "job-a", "table_name": "orders"}, [first]),
        ({"job_id": "job-z"}, []),
        ({"since": second.received_at}, [third, second]),
        ({"until": second.received_at}, [first]),
        ({"since": second.received_at, "until": third.received_at}, [second]),
    ]
    for filters, wanted in cases:
        listed = await store.list_events(**filters)
        assert [e.execution_id for e, _ in listed] == [e.execution_id for e in wanted], filters


@pytest.mark.parametrize("tied", [False, True], ids=["distinct-times", "tied-times"])
async def test_list_events_pages_through_everything_newest_first(store: Store, tied: bool) -> None:
    recorded = [await record(store, f"e{i:02}") for i in range(25)]
    if tied:  # several events share a received_at: the id breaks the tie
        base = time.time()
        for i, r in enumerate(recorded):
            await set_columns(store, events, r.event.id, received_at=base + i // 4)
    everything = await store.list_events(limit=100)

    pages: list[list[str]] = []
    before: tuple[float, str] | None = None
    for _ in range(5):  # bounded: a cursor that does not advance must fail, not hang
        page = await store.list_events(limit=10, before=before)
        if not page:
            break
        pages.append([e.id for e, _ in page])
        last = page[-1][0]
        before = (last.received_at, last.id)

    assert [len(p) for p in pages] == [10, 10, 5]
    assert [i for p in pages for i in p] == [e.id for e, _ in everything]
    assert len(everything) == 25
    keys = [(e.received_at, e.id) for e, _ in everything]
    assert keys == sorted(keys, reverse=True)
    assert all(len(ds) == 1 for _, ds in everything)


# -- prune ------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [500, 2])
async def test_prune_deletes_old_finished_events_with_their_deliveries_and_attempts(
    store: Store, batch: int
) -> None:
    old_finished = [await finished(store, DELIVERED) for _ in range(4)]
    old_finished.append(await record(store, routes=(), ignored_reason="no route"))
    old_dead = await finished(store, DEAD)
    old_pending = await record(store)
    old_mixed = await record(store, routes=("a", "b"), claim_for="w")
    assert await complete(store, old_mixed.deliveries[0], "w", state=DELIVERED)
    assert await complete(store, old_mixed.deliveries[1], "w", "permanent", state=DEAD)
    cut_off = time.time()
    newer = await finished(store, DELIVERED)
    newer_ignored = await record(store, routes=(), ignored_reason="no route")
    pruned_deliveries = [d.id for r in old_finished for d in r.deliveries]
    assert len(await store.attempts_of(pruned_deliveries)) == 4

    removed = await store.prune(cut_off, batch=batch)

    assert removed == 5
    for r in old_finished:
        assert await store.get_event(r.event.id) is None
    for r in (old_dead, old_pending, old_mixed, newer, newer_ignored):
        assert await store.get_event(r.event.id) == (r.event, await _deliveries_of(store, r))
    assert await store.attempts_of(pruned_deliveries) == []
    assert await rows(store, deliveries) == 1 + 1 + 2 + 1
    assert await rows(store, attempts) == 1 + 2 + 1
    assert await store.prune(cut_off, batch=batch) == 0


async def _deliveries_of(store: Store, recorded: Recorded) -> list[DeliveryRecord]:
    return [await delivery(store, d.id) for d in recorded.deliveries]


# -- schema and durability --------------------------------------------------------------


async def test_reopening_a_database_keeps_its_events(database_url: str) -> None:
    first = await Store.open(database_url)
    try:
        recorded = await record(first, "exec-1")
    finally:
        await first.close()

    second = await Store.open(database_url)
    try:
        assert await second.get_event(recorded.event.id) == (
            recorded.event,
            recorded.deliveries,
        )
        assert not (await record(second, "exec-1")).created
    finally:
        await second.close()


async def test_a_database_from_a_newer_release_refuses_to_open(database_url: str) -> None:
    opened = await Store.open(database_url)
    newer = SCHEMA_VERSION + 1
    try:
        newer_version = update(meta).where(meta.c.key == "schema_version")
        await opened.run(lambda conn: conn.execute(newer_version.values(value=str(newer))))
    finally:
        await opened.close()

    with pytest.raises(StoreUnavailable) as refused:
        await Store.open(database_url)

    message = str(refused.value)
    assert f"schema version {newer}" in message
    assert f"({SCHEMA_VERSION})" in message


# SQLite only: its journal, synchronous level and file lock.


@pytest.mark.parametrize(
    ("durability", "synchronous"), [(Durability.POWER, 2), (Durability.CRASH, 1)]
)
async def test_durability_sets_synchronous_on_a_wal_journal(
    db_path: Path, durability: Durability, synchronous: int
) -> None:
    opened = await Store.open(url(db_path), durability)
    try:
        found, journal = await opened.run(
            lambda conn: (
                conn.exec_driver_sql("PRAGMA synchronous").scalar(),
                conn.exec_driver_sql("PRAGMA journal_mode").scalar(),
            )
        )
    finally:
        await opened.close()

    assert found == synchronous
    assert journal == "wal"


async def test_check_writable_fails_while_another_connection_holds_the_write_lock(
    db_path: Path,
) -> None:
    opened = await Store.open(url(db_path), lock_timeout=0.2)
    try:
        await opened.check_writable()
        with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(StoreUnavailable, match="locked"):
                await opened.check_writable()
            other.execute("ROLLBACK")
        await opened.check_writable()
    finally:
        await opened.close()


# PostgreSQL only: what the service asks of its sessions, its locks, its connections.


@pytest.mark.parametrize("durability", list(Durability))
async def test_postgresql_sessions_commit_synchronously_with_the_lock_timeouts(
    postgres_url: str, durability: Durability
) -> None:
    """Both durabilities mean the server's own durability: a commit is in its WAL before
    the webhook answers (synchronous_commit=on, whatever the server's default)."""
    opened = await Store.open(postgres_url, durability, lock_timeout=1.5, pool_size=3)
    try:
        names = (
            "synchronous_commit",
            "lock_timeout",
            "statement_timeout",
            "application_name",
            "transaction_isolation",
        )
        shown = await opened.run(
            lambda conn: {name: conn.execute(text(f"SHOW {name}")).scalar() for name in names}
        )
        status = opened.engine.pool.status()
    finally:
        await opened.close()

    assert shown == {
        "synchronous_commit": "on",
        "lock_timeout": "1500ms",
        "statement_timeout": "3s",
        "application_name": APPLICATION_NAME,
        "transaction_isolation": "read committed",
    }
    assert "Pool size: 3" in status


async def test_a_write_waiting_on_a_postgresql_lock_fails_within_the_lock_timeout(
    postgres_url: str,
) -> None:
    opened = await Store.open(postgres_url, lock_timeout=0.3)
    other = create_async_engine(postgres_url.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        async with other.begin() as conn:
            await conn.execute(text("LOCK TABLE events IN ACCESS EXCLUSIVE MODE"))
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=r"lock timeout|statement timeout"):
                await record(opened, "exec-locked")
            waited = time.monotonic() - started
        recorded = await record(opened, "exec-locked")
    finally:
        await other.dispose()
        await opened.close()

    assert 0.25 <= waited < 3.0
    assert recorded.created  # nothing of the refused attempt was kept


async def test_a_postgresql_store_replaces_connections_the_server_dropped(
    postgres_url: str,
) -> None:
    """What a server restart does to the pool: every connection is gone at once. The
    next transaction notices at checkout (pre-ping) and opens a new one."""
    opened = await Store.open(postgres_url)
    other = create_async_engine(postgres_url.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        first = await record(opened)
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
        second = await record(opened)
        assert await opened.get_event(first.event.id) is not None
        assert await opened.get_event(second.event.id) is not None
    finally:
        await other.dispose()
        await opened.close()

    assert killed is not None
    assert killed >= 1


async def test_a_postgresql_server_that_is_not_there_is_store_unavailable() -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/bridge"

    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"(?i)refused|connect"):
        await Store.open(nowhere, pool_timeout=2)

    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("scheme", "query"),
    [("postgresql", ""), ("postgres", "?sslmode=disable"), ("postgresql+asyncpg", "?ssl=disable")],
)
async def test_every_spelling_of_a_postgresql_url_opens_the_store(
    postgres_url: str, scheme: str, query: str
) -> None:
    spelled = scheme + postgres_url.removeprefix("postgresql") + query

    opened = await Store.open(spelled)
    try:
        assert opened.postgres
        assert (await record(opened)).created
    finally:
        await opened.close()

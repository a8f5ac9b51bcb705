"""Following each flow run to its end (app.delivery.follow), against the real Prefect
server: a run is asked for until its state is final, then never again; a run deleted in
Prefect is gone; nothing is asked while the circuit is open or Prefect is down, and the
runs are caught up after; replicas never hold one run at once; 1,000 runs cost one
request per round. The follower's rounds are called directly, the clock moved by hand."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import PREFECT_API_VERSION
from app.delivery.client import PrefectConnection
from app.delivery.follow import (
    FOLLOW_BATCH,
    Follower,
    FollowPolicy,
    ended,
    erathos_finished_at,
    plan_seen,
)
from app.delivery.gate import Circuit
from app.delivery.status import ConnectionStatus
from app.errors import QueryTimedOut
from app.metrics import Metrics
from app.storage.database import Database
from app.storage.history import History
from app.storage.records import RunState
from app.storage.runs import Followed, Origin, Runs
from app.storage.store import Store
from tests.support.follow import delivered, new_flow_run, set_run_state
from tests.support.reads import HeldReads
from tests.support.stores import open_store, opened
from tests.support.waiting import ManualClock
from tools.localprefect import PrefectServer

pytestmark = pytest.mark.anyio

POLICY = FollowPolicy(interval=5.0, follow_for=86400.0, lease=60.0)
CONNECTION = "default"


@pytest.fixture
def now_clock(clock: ManualClock) -> ManualClock:
    """The test's clock, set to the real time: Prefect's runs carry real times."""
    clock.now = time.time()
    return clock


@pytest.fixture
def runs(database: Database, now_clock: ManualClock) -> Runs:
    return Runs(database, now_clock)


@pytest.fixture
async def connection(prefect: PrefectServer) -> AsyncIterator[PrefectConnection]:
    async with PrefectConnection(
        CONNECTION, prefect.api_url, api_version=PREFECT_API_VERSION, timeout=10.0
    ) as made:
        yield made


def follower(
    runs: Runs,
    connection: PrefectConnection,
    metrics: Metrics,
    *,
    owner: str = "replica-a",
    circuit: Circuit = Circuit.CLOSED,
) -> Follower:
    def status() -> Mapping[str, ConnectionStatus]:
        return {connection.name: ConnectionStatus(connection.name, circuit, 4, 0)}

    return Follower(runs, {connection.name: connection}, status, POLICY, metrics, owner, 86400.0)


def asked(metrics: Metrics, status: str = "2xx") -> float:
    value = metrics.registry.get_sample_value(
        "erathos_bridge_follow_requests_total", {"connection": CONNECTION, "status": status}
    )
    return value or 0.0


async def test_a_run_is_followed_until_it_completes_and_never_asked_for_after(
    store: Store,
    history: History,
    runs: Runs,
    connection: PrefectConnection,
    prefect: PrefectServer,
    flow_id: str,
    now_clock: ManualClock,
) -> None:
    metrics = Metrics([CONNECTION])
    run_id = new_flow_run(prefect, flow_id)
    made = await delivered(store, run_id)
    following = follower(runs, connection, metrics)

    [first] = await following.follow_once(CONNECTION)
    still = await history.get_delivery(made.id)

    assert first.state is RunState.PENDING
    assert still is not None
    assert still.run_state is RunState.PENDING
    assert still.follow_due_at == now_clock() + POLICY.interval  # asked again next round

    set_run_state(prefect, run_id, "RUNNING")
    set_run_state(prefect, run_id, "COMPLETED")
    now_clock.advance(POLICY.interval)
    [last] = await following.follow_once(CONNECTION)
    done = await history.get_delivery(made.id)

    assert last.state is RunState.COMPLETED
    assert done is not None
    assert done.run_state is RunState.COMPLETED
    assert done.follow_due_at is None
    assert done.follow_owner is None
    assert done.run_started_at is not None
    assert done.run_ended_at is not None
    assert done.run_state_at is not None
    assert done.run_state_at >= done.run_started_at
    finished = metrics.registry.get_sample_value(
        "erathos_bridge_runs_finished_total", {"route": "dbt", "state": "completed"}
    )
    assert finished == 1

    requests = asked(metrics)
    now_clock.advance(10 * POLICY.interval)
    assert await following.follow_once(CONNECTION) == []
    assert asked(metrics) == requests == 2  # none after the final state
    assert await runs.followed() == {}


async def test_a_run_deleted_in_prefect_is_marked_gone(
    store: Store,
    history: History,
    runs: Runs,
    connection: PrefectConnection,
    prefect: PrefectServer,
    flow_id: str,
) -> None:
    metrics = Metrics([CONNECTION])
    kept_id, deleted_id = new_flow_run(prefect, flow_id), new_flow_run(prefect, flow_id)
    kept, deleted = await delivered(store, kept_id), await delivered(store, deleted_id)
    prefect.request("DELETE", f"flow_runs/{deleted_id}")

    seen = await follower(runs, connection, metrics).follow_once(CONNECTION)

    assert {run.delivery_id: run.state for run in seen} == {
        kept.id: RunState.PENDING,
        deleted.id: RunState.GONE,
    }
    gone = await history.get_delivery(deleted.id)
    assert gone is not None
    assert gone.run_state is RunState.GONE
    assert gone.follow_due_at is None
    assert gone.run_state_at is not None
    assert await runs.final_counts(0.0) == {RunState.GONE: 1}


async def test_nothing_is_asked_while_the_circuit_is_open_and_the_runs_are_caught_up_after(
    store: Store,
    runs: Runs,
    connection: PrefectConnection,
    prefect: PrefectServer,
    flow_id: str,
) -> None:
    metrics = Metrics([CONNECTION])
    run_id = new_flow_run(prefect, flow_id)
    await delivered(store, run_id)
    set_run_state(prefect, run_id, "FAILED")

    paused = follower(runs, connection, metrics, circuit=Circuit.OPEN)
    assert await paused.follow_once(CONNECTION) == []
    assert asked(metrics) == 0
    assert await runs.followed() == {CONNECTION: 1}

    [seen] = await follower(runs, connection, metrics).follow_once(CONNECTION)
    assert seen.state is RunState.FAILED
    assert await runs.followed() == {}


@pytest.mark.every_database
async def test_replicas_never_hold_one_run_at_once_and_a_dead_ones_runs_are_taken_over(
    store: Store, runs: Runs, now_clock: ManualClock
) -> None:
    made = [await delivered(store, f"run-{n}") for n in range(3)]

    first = await runs.claim("replica-a", CONNECTION, FOLLOW_BATCH, POLICY.lease)
    second = await runs.claim("replica-b", CONNECTION, FOLLOW_BATCH, POLICY.lease)

    assert {run.delivery_id for run in first} == {d.id for d in made}
    assert second == []  # held by replica-a, within its lease
    now_clock.advance(POLICY.lease + 1)  # replica-a died holding them
    taken = await runs.claim("replica-b", CONNECTION, FOLLOW_BATCH, POLICY.lease)
    assert {run.delivery_id for run in taken} == {d.id for d in made}
    seen = plan_seen(first, [], now_clock(), POLICY, {})
    assert await runs.record("replica-a", seen) == []  # too late: replica-b holds them


def test_what_prefects_answer_says_of_each_run() -> None:
    payload = {
        "execution_id": "e1",
        "finished_at_date": "2026-12-07",
        "finished_at_time": "06:00",
    }
    finished = datetime(2026, 12, 7, 6, 0, tzinfo=UTC).timestamp()
    received = finished + 30
    now = finished + 600

    def followed(name: str, delivered_at: float = received) -> Followed:
        return Followed(name, f"event-{name}", f"run-{name}", "dbt", CONNECTION, None, delivered_at)

    answer = [
        {
            "id": "run-done",
            "state_type": "COMPLETED",
            "state": {"type": "COMPLETED", "timestamp": "2026-12-07T06:05:00+00:00"},
            "start_time": "2026-12-07T06:01:00+00:00",
            "end_time": "2026-12-07T06:05:00+00:00",
        },
        {"id": "run-going", "state": {"type": "RUNNING"}},
        {"id": "run-old", "state": {"type": "RUNNING"}},
    ]
    runs = [followed("done"), followed("going"), followed("old", now - 86400), followed("deleted")]

    origins = {f"event-{name}": Origin(received, payload) for name in ("done", "going")}
    assert [run.delivery_id for run in ended(runs, answer)] == ["done"]  # its event is read
    done, going, old, deleted = plan_seen(runs, answer, now, POLICY, origins)

    assert done.state is RunState.COMPLETED
    assert done.due_at is None
    assert done.started_at == finished + 60
    assert done.ended_at == finished + 300
    assert done.freshness is not None
    assert done.freshness.from_finish == 300
    assert done.freshness.from_receipt == 270
    assert going.state is RunState.RUNNING
    assert going.due_at == now + POLICY.interval
    assert going.freshness is None
    assert old.state is RunState.RUNNING
    assert old.due_at is None
    assert deleted.state is RunState.GONE
    assert deleted.due_at is None


def test_a_sets_run_is_as_fresh_as_its_last_members_load() -> None:
    loads = [
        {"member": "raw_shop.orders", "finished_at": "2026-12-07T06:00:00Z"},
        {"member": "raw_shop.customers", "finished_at": "2026-12-07T06:20:00Z"},
        {"member": "raw_shop.payments", "finished_at": None},
    ]
    window = {"set": {"name": "shop", "window": "w", "loads": loads, "missing": []}}
    last = datetime(2026, 12, 7, 6, 20, tzinfo=UTC).timestamp()
    run = Followed("d", "event-d", "run-d", "set:shop", CONNECTION, None, last)
    answer = [{"id": "run-d", "state": {"type": "FAILED"}, "end_time": "2026-12-07T06:25:00Z"}]

    [seen] = plan_seen([run], answer, last + 600, POLICY, {"event-d": Origin(last, window)})

    assert seen.freshness is not None
    assert seen.freshness.route == "set:shop"
    assert seen.freshness.from_finish == 300  # from the latest member's finish
    assert erathos_finished_at({"set": {"loads": []}}, "set:shop") is None  # late: none arrived


@pytest.mark.slow
async def test_with_prefect_stopped_and_started_again_following_resumes(
    store: Store, history: History, runs: Runs, now_clock: ManualClock
) -> None:
    server = PrefectServer.launch()
    try:
        flow = server.create_flow("followed-across-a-restart")
        run_id = new_flow_run(server, flow)
        made = await delivered(store, run_id)
        set_run_state(server, run_id, "COMPLETED")
        metrics = Metrics([CONNECTION])
        async with PrefectConnection(
            CONNECTION, server.api_url, api_version=PREFECT_API_VERSION, timeout=5.0
        ) as connection:
            following = follower(runs, connection, metrics)
            server.stop()

            assert await following.follow_once(CONNECTION) == []
            assert asked(metrics, "error") == 1
            waiting = await history.get_delivery(made.id)
            assert waiting is not None
            assert waiting.run_state is None
            assert waiting.follow_owner is None  # given back, due again next round
            assert waiting.follow_due_at == now_clock() + POLICY.interval

            server.start()
            now_clock.advance(POLICY.interval)
            [seen] = await following.follow_once(CONNECTION)

        assert seen.state is RunState.COMPLETED
        assert await runs.followed() == {}
    finally:
        server.stop()


@pytest.mark.slow
async def test_a_thousand_runs_cost_one_request_per_round_each_run_asked_for_once(
    store: Store,
    runs: Runs,
    connection: PrefectConnection,
    prefect: PrefectServer,
    flow_id: str,
    now_clock: ManualClock,
) -> None:
    metrics = Metrics([CONNECTION])
    for _ in range(1000):
        await delivered(store, new_flow_run(prefect, flow_id))
    following = follower(runs, connection, metrics)

    seen: list[str] = []
    for round_number in range(1, 6):
        found = await following.follow_once(CONNECTION)
        assert len(found) == FOLLOW_BATCH
        assert asked(metrics) == round_number  # one request per round, however many runs
        seen += [run.delivery_id for run in found]

    assert len(set(seen)) == 1000  # each asked for once, the most overdue first
    assert await following.follow_once(CONNECTION) == []  # none due again yet
    assert asked(metrics) == 5
    assert await runs.followed() == {CONNECTION: 1000}


async def test_a_replayed_delivery_forgets_its_runs_state_and_is_followed_afresh(
    store: Store, history: History, runs: Runs, now_clock: ManualClock
) -> None:
    made = await delivered(store, "run-1")
    [claimed] = await runs.claim("replica-a", CONNECTION, FOLLOW_BATCH, POLICY.lease)
    await runs.record("replica-a", plan_seen([claimed], [], now_clock(), POLICY, {}))  # gone

    replayed = await history.replay(made.id, new_run=True)

    assert replayed.run_state is None
    assert replayed.run_state_at is None
    assert replayed.follow_due_at is None  # until it is delivered again, with its new run


def test_a_webhook_body_with_a_set_key_is_read_as_a_load_not_a_set() -> None:
    """Erathos bodies keep unknown keys: a load's "set" is not a set's window (it once
    raised, and the batch of runs it was in was never recorded)."""
    body = {"set": {"loads": 5}, "finished_at_date": "2026-12-07"}
    assert erathos_finished_at(body, "example-dbt") is None
    faked = {"set": {"loads": [{"finished_at": "2026-12-07T01:00:00Z"}]}}
    assert erathos_finished_at(faked, "example-dbt") is None


async def test_a_run_prefect_never_answers_for_stops_being_followed_after_follow_for(
    store: Store, history: History, runs: Runs, now_clock: ManualClock
) -> None:
    """BRIDGE_FOLLOW_FOR holds when Prefect gives no usable answer too: the run is no
    longer claimed round after round, for ever."""
    made = await delivered(store, "00000000-0000-4000-8000-000000000001")
    metrics = Metrics([CONNECTION])
    async with PrefectConnection(
        CONNECTION, "http://127.0.0.1:9/api", api_version=PREFECT_API_VERSION, timeout=1.0
    ) as connection:
        following = follower(runs, connection, metrics)
        now_clock.advance(POLICY.follow_for + 1)
        assert await following.follow_once(CONNECTION) == []

    stopped = await history.get_delivery(made.id)
    assert stopped is not None
    assert (stopped.follow_owner, stopped.follow_due_at) == (None, None)
    assert await runs.followed() == {}


@contextmanager
def writes_begun(database: Database) -> Iterator[list[object]]:
    """Each transaction begun meanwhile on the store's writes' engine (SQLite's one writer
    and its write lock, PostgreSQL's writes' pool); reads have engines of their own."""
    engine = database.engine
    writes = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    begun: list[object] = []

    def seen(conn: object) -> None:
        begun.append(conn)

    event.listen(writes, "begin", seen)
    try:
        yield begun
    finally:
        event.remove(writes, "begin", seen)


@pytest.mark.every_database
async def test_a_round_with_nothing_due_writes_nothing(
    store: Store,
    database: Database,
    runs: Runs,
    connection: PrefectConnection,
    prefect: PrefectServer,
    flow_id: str,
    now_clock: ManualClock,
) -> None:
    """Most rounds find nothing due (every 5 s, per connection and replica): they read,
    and take no writer's turn; a round with a run due claims and records it."""
    metrics = Metrics([CONNECTION])
    following = follower(runs, connection, metrics)
    with writes_begun(database) as begun:
        assert await following.follow_once(CONNECTION) == []  # nothing followed yet
    assert begun == []

    await delivered(store, new_flow_run(prefect, flow_id))
    [first] = await following.follow_once(CONNECTION)
    with writes_begun(database) as begun:
        assert await following.follow_once(CONNECTION) == []  # due again only in 5 s
    assert begun == []
    assert asked(metrics) == 1

    now_clock.advance(POLICY.interval)
    with writes_begun(database) as begun:
        [again] = await following.follow_once(CONNECTION)
    assert len(begun) == 2  # the claim, and what Prefect said
    assert again.delivery_id == first.delivery_id
    assert asked(metrics) == 2


async def test_a_round_with_nothing_due_goes_on_while_another_process_holds_the_write_lock(
    tmp_path: Path,
    connection: PrefectConnection,
    prefect: PrefectServer,
    flow_id: str,
    now_clock: ManualClock,
) -> None:
    """SQLite has one write lock for every process (the CLI's too): an idle round needs
    none, where a claim would wait for it and fail once BRIDGE_DB_LOCK_TIMEOUT ran out."""
    path = tmp_path / "bridge.db"
    store = await open_store(f"sqlite:///{path}", clock=now_clock, lock_timeout=0.5)
    try:
        runs = Runs(store.database, now_clock)
        following = follower(runs, connection, Metrics([CONNECTION]))
        await delivered(store, new_flow_run(prefect, flow_id))
        assert len(await following.follow_once(CONNECTION)) == 1  # due again in 5 s
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            idle = await following.follow_once(CONNECTION)
            other.execute("ROLLBACK")
    finally:
        await store.database.close()

    assert idle == []


@contextmanager
def events_read(database: Database) -> Iterator[list[str]]:
    """Each statement meanwhile, on the writes' or the reads' engine, that reads events."""
    engines = [database.engine, *([database.reads.engine] if database.reads else [])]
    watched = [e.sync_engine if isinstance(e, AsyncEngine) else e for e in engines]
    found: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if " events" in statement and statement.lstrip().upper().startswith("SELECT"):
            found.append(statement)

    for engine in watched:
        event.listen(engine, "before_cursor_execute", seen)
    try:
        yield found
    finally:
        for engine in watched:
            event.remove(engine, "before_cursor_execute", seen)


async def test_only_the_events_of_runs_that_ended_are_read_once_prefect_answered(
    store: Store,
    database: Database,
    runs: Runs,
    connection: PrefectConnection,
    prefect: PrefectServer,
    flow_id: str,
    now_clock: ManualClock,
) -> None:
    """A run's event (its body, parsed for Erathos's finish time) is needed only for the
    freshness of a run that ended: never inside the claim, never for a run still going."""
    metrics = Metrics([CONNECTION])
    going, ending = new_flow_run(prefect, flow_id), new_flow_run(prefect, flow_id)
    await delivered(store, going)
    await delivered(store, ending)
    following = follower(runs, connection, metrics)

    with events_read(database) as read:
        assert len(await following.follow_once(CONNECTION)) == 2
    assert read == []  # both still pending

    set_run_state(prefect, ending, "COMPLETED")
    now_clock.advance(POLICY.interval)
    with events_read(database) as read:
        seen = await following.follow_once(CONNECTION)
    assert len(read) == 1
    [done] = [run for run in seen if run.state is RunState.COMPLETED]
    assert done.freshness is not None


async def test_runs_whose_events_cannot_be_read_are_given_back_for_the_next_round(
    database_url: str,
    connection: PrefectConnection,
    prefect: PrefectServer,
    flow_id: str,
    now_clock: ManualClock,
) -> None:
    """Prefect said the run ended, but every read connection is held by operators' reads
    past BRIDGE_DB_READ_TIMEOUT: the round fails, and its runs are due again next round
    (not at the end of their 60 s lease); the next round records the run's end. On
    SQLite, where reads can be held past their deadline (PostgreSQL's statement_timeout
    ends held reads as soon as the waiting one's pool_timeout)."""
    async with opened(database_url, read_timeout=0.5) as database:
        store, runs, history = (
            Store(database, now_clock),
            Runs(database, now_clock),
            History(database),
        )
        run_id = new_flow_run(prefect, flow_id)
        set_run_state(prefect, run_id, "COMPLETED")
        made = await delivered(store, run_id)
        held = HeldReads(database)
        holding: list[asyncio.Task[int]] = []

        class HeldWhileAsking(Follower):
            async def _ask(self, name: str, flow_run_ids: list[str]) -> list[Any] | None:
                answer = await super()._ask(name, flow_run_ids)
                holding.extend(await held.__aenter__())  # operators' reads, from now on
                return answer

        following = HeldWhileAsking(
            runs, {CONNECTION: connection}, lambda: {}, POLICY, Metrics([CONNECTION]), "a", 86400.0
        )
        with pytest.raises(QueryTimedOut):
            await following.follow_once(CONNECTION)
        await held.release()
        await asyncio.gather(*holding, return_exceptions=True)  # stopped at their deadline
        given_back = await history.get_delivery(made.id)
        assert given_back is not None
        assert (given_back.follow_owner, given_back.run_state) == (None, None)
        assert given_back.follow_due_at == now_clock() + POLICY.interval

        now_clock.advance(POLICY.interval)
        [seen] = await follower(runs, connection, Metrics([CONNECTION])).follow_once(CONNECTION)
        assert seen.state is RunState.COMPLETED
        assert seen.freshness is not None

"""The follower's queries and what operators read of them are planned on an index: each
statement ``app.storage.runs.Runs`` and the run-state listing execute is captured as it
runs and explained. On SQLite (no statistics, as the service runs it) none scans the
deliveries, the events or the freshness table (a scan of a partial index reads only the
rows it holds: the runs followed); on PostgreSQL, with sequential scans priced out (a
tiny table is cheaper to scan), an index serves each of them."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, inspect, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from app.storage.database import Database
from app.storage.history import History
from app.storage.records import RunState
from app.storage.runs import Freshness, Runs, RunSeen
from app.storage.schema import FOLLOW_INDEXES, SCHEMA_VERSION, deliveries, meta
from app.storage.store import Store
from tests.support.follow import delivered
from tests.support.stores import open_store, record
from tests.support.waiting import ManualClock

pytestmark = pytest.mark.anyio

RUN_COLUMNS = (
    "run_state",
    "run_state_at",
    "run_started_at",
    "run_ended_at",
    "follow_due_at",
    "follow_owner",
)
PARTIAL = ("deliveries_followed", "deliveries_run_state", "deliveries_run_state_at")


class Captured:
    """Every statement (with its parameters) the database runs while capturing."""

    def __init__(self, database: Database) -> None:
        self.statements: list[tuple[str, Any]] = []
        engine = database.engine
        self.engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
        self.database = database
        # The writes' engine, and the reads' (operators' reads run on connections apart).
        self.watched = [self.engine]
        if database.reads is not None:
            reads = database.reads.engine
            self.watched.append(reads.sync_engine if isinstance(reads, AsyncEngine) else reads)
        for watched in self.watched:
            event.listen(watched, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "INSERT")):
            self.statements.append((statement, parameters))

    async def plans(self) -> list[tuple[str, list[str]]]:
        for watched in self.watched:
            event.remove(watched, "before_cursor_execute", self._seen)
        if self.database.postgres:
            return [(s, await self._postgres_plan(s, p)) for s, p in self.statements]
        explained = []
        with self.engine.connect() as conn:
            for statement, parameters in self.statements:
                driver = conn.connection.driver_connection
                assert driver is not None
                rows = driver.execute(f"EXPLAIN QUERY PLAN {statement}", parameters).fetchall()
                explained.append((statement, [str(row[-1]) for row in rows]))
        return explained

    async def _postgres_plan(self, statement: str, parameters: Any) -> list[str]:
        def explain(conn: Connection) -> list[str]:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            rows = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).all()
            return [str(row[0]).strip() for row in rows]

        return await self.database.run(explain)


def scans(plan: list[str]) -> list[str]:
    """The steps that read a whole table (or a whole index that is not a partial one)."""
    return [
        step
        for step in plan
        if (step.startswith("SCAN") or "Seq Scan" in step)
        and any(table in step for table in ("deliveries", "run_freshness", "events"))
        and not any(index in step for index in PARTIAL)
    ]


@pytest.mark.every_database
async def test_every_query_of_following_runs_is_planned_on_an_index(
    database: Database, store: Store, clock: ManualClock
) -> None:
    runs, history = Runs(database, clock), History(database, clock)
    made = [await delivered(store, f"run-{n}") for n in range(3)]
    captured = Captured(database)

    assert await runs.any_due("default")  # an idle round's one query, on the reads' path
    claimed = await runs.claim("owner", "default", 200, 60.0)
    await runs.origins([run.event_id for run in claimed])  # the events of runs that ended
    ended = Freshness("dbt", clock(), 30.0, 20.0)
    seen = [RunSeen(made[0].id, RunState.FAILED, clock(), clock(), clock(), None, ended)]
    seen += [RunSeen(run.delivery_id, RunState.RUNNING, due_at=clock() + 5) for run in claimed[1:]]
    await runs.record("owner", seen)
    await runs.release("owner", [made[1].id], clock())
    await runs.followed()
    await runs.final_counts(clock() - 86400)
    await runs.freshness(clock() - 86400)
    await runs.prune(clock() - 86400 * 30)
    await history.list_events(run_state=RunState.FAILED, limit=50)
    await history.list_events(
        run_state=RunState.FAILED, before=(clock(), "f" * 32), since=clock() - 86400, limit=50
    )
    assert await runs.stop_following() == 2  # BRIDGE_FOLLOW_RUNS turned off
    assert not await runs.any_due("default")

    explained = await captured.plans()
    counted = [" ".join(plan) for statement, plan in explained if "count(*)" in statement]
    assert any("deliveries_run_state_at" in plan for plan in counted), counted
    assert len(explained) >= 10
    for statement, plan in explained:
        assert scans(plan) == [], (statement, plan)


@pytest.mark.every_database
async def test_a_version_3_database_is_upgraded_to_follow_runs(
    database_url: str, clock: ManualClock
) -> None:
    """Version 3 had no run state, no follow lease, no partial indexes and no freshness
    table; steps 4 and 5 (issues 23 and 25) change nothing here yet."""
    store = await open_store(database_url, clock=clock)
    try:
        earlier = await delivered(store, "run-before")

        def as_version_3(conn: Connection) -> None:
            for index in FOLLOW_INDEXES:
                conn.execute(text(f"DROP INDEX {index.name}"))
            conn.execute(text("DROP TABLE run_freshness"))
            for column in RUN_COLUMNS:
                conn.execute(text(f"ALTER TABLE deliveries DROP COLUMN {column}"))
            conn.execute(update(meta).where(meta.c.key == "schema_version").values(value="3"))

        await store.database.run(as_version_3)
    finally:
        await store.database.close()

    upgraded = await open_store(database_url, clock=clock)
    try:
        runs = Runs(upgraded.database, clock)
        kept = await History(upgraded.database, clock).get_delivery(earlier.id)
        later = await delivered(upgraded, "run-after")
        claimed = await runs.claim("owner", "default", 200, 60.0)
        version = await upgraded.database.run(
            lambda conn: conn.scalar(select(meta.c.value).where(meta.c.key == "schema_version"))
        )
        indexes = await upgraded.database.run(
            lambda conn: {i["name"] for i in inspect(conn).get_indexes("deliveries")}
        )
    finally:
        await upgraded.database.close()

    assert version == str(SCHEMA_VERSION) == "6"
    assert {index.name for index in FOLLOW_INDEXES} <= indexes
    assert kept is not None
    assert (kept.run_state, kept.follow_due_at) == (None, None)  # delivered before: not followed
    assert [run.delivery_id for run in claimed] == [later.id]


@pytest.mark.every_database
async def test_a_page_by_run_state_holds_each_event_once_and_is_full(
    database: Database, store: Store, clock: ManualClock
) -> None:
    """Events whose five runs are each in the state: a page of two holds two events (a
    short page would read as the end of the list), and the next page the third."""
    recorded = []
    for _ in range(3):
        recorded.append(await record(store, routes=[f"dbt-{n}" for n in range(5)]))
        clock.advance(1)
    done = {"run_state": RunState.COMPLETED.value, "run_state_at": clock()}
    await database.run(lambda conn: conn.execute(update(deliveries).values(**done)))
    history = History(database, clock)

    first = await history.list_events(run_state=RunState.COMPLETED, limit=2)
    last = first[-1][0]
    rest = await history.list_events(
        run_state=RunState.COMPLETED, before=(last.received_at, last.id), limit=2
    )

    newest_first = [r.event.id for r in reversed(recorded)]
    assert [event.id for event, _ in first + rest] == newest_first

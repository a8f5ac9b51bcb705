"""Every operator query is planned on an index, on SQLite and on PostgreSQL: a change
that turns one into a scan of a whole table fails here, long before a million events
make it minutes (figure 10 in bench/README.md measures them at that size)."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy.engine import Connection

from app.storage.database import Database
from app.storage.history import History
from app.storage.maintenance import prune_finished
from app.storage.records import DeliveryState, EventState
from app.storage.set_windows import SetWindows
from app.storage.store import Store
from tests.support.statements import Statement, captured
from tests.support.stores import finished, load_into, record, set_plan

pytestmark = [pytest.mark.anyio, pytest.mark.every_database]


async def plan_of(database: Database, url: str, statement: Statement) -> str:
    sql, parameters = statement
    if not database.postgres:
        path = url.removeprefix("sqlite:///")
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows = db.execute(f"EXPLAIN QUERY PLAN {sql}", parameters).fetchall()
        return "\n".join(str(row[-1]) for row in rows)

    def explain(conn: Connection) -> str:
        # With sequential scans priced out, one is left only where no index can serve.
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        result = conn.exec_driver_sql(f"EXPLAIN {sql}", parameters)
        return "\n".join(str(row[0]) for row in result)

    return await database.read(explain)


def scans_a_whole_table(plan: str, postgres: bool) -> bool:
    if postgres:
        return "Seq Scan" in plan
    # "SCAN <table>" without "USING ... INDEX" reads every row (subqueries and constant
    # rows are scanned too, harmlessly).
    tables = ("events", "deliveries", "attempts", "bridge_meta", "set_windows", "set_loads")
    return any(
        line.strip().split(" ")[:2] in (["SCAN", t] for t in tables) and " USING " not in line
        for line in plan.splitlines()
    )


async def test_every_operator_query_is_planned_on_an_index(
    database: Database, database_url: str, store: Store, history: History
) -> None:
    first = await finished(store, DeliveryState.DEAD, table_name="orders", job_id="job-1")
    await finished(store, DeliveryState.DELIVERED)
    await record(store, "pending")
    await record(store, "ignored", routes=())
    cursor = (first.event.received_at, first.event.id)
    shop = set_plan("shop", ("orders", "customers"))
    for member in ("orders", "customers", "orders"):  # a completed window, an open one
        await load_into(store, shop, member)

    with captured(database) as statements:
        for state in EventState:
            await history.list_events(state=state)
            await history.list_events(state=state, before=cursor)
        await history.list_events()
        await history.list_events(before=cursor)
        await history.list_events(table_name="orders")
        await history.list_events(table_name="orders", state=EventState.DEAD, before=cursor)
        await history.list_events(job_id="job-1")
        await history.list_events(since=first.event.received_at)
        await history.get_event(first.event.id)
        await history.get_delivery(first.deliveries[0].id)
        await history.attempts_of([first.deliveries[0].id])
        await history.outcomes_by_hour(first.event.received_at - 3600)
        await history.pending_deliveries()
        await history.pending_summary()
        await prune_finished(database, older_than=first.event.received_at - 1)
        # The sets' windows: GET /sets, /sets/{name}/windows, the console, the CLI.
        windows = SetWindows(database, history.clock)
        await windows.windows({}, limit=50)
        await windows.windows({}, open_only=True, limit=500)
        await windows.windows({"shop": ["orders"]}, set_name="shop", limit=50)
        await windows.recent({"shop": ["orders"]}, ["shop", "other"], per_set=31)

    plans = [(sql, await plan_of(database, database_url, (sql, p))) for sql, p in statements]
    scans = [(sql, plan) for sql, plan in plans if scans_a_whole_table(plan, database.postgres)]
    assert len(statements) > 20
    assert scans == []

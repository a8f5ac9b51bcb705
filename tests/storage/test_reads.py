"""Operators' reads never stand in a webhook's way: held open on every read connection,
the store still commits events within BRIDGE_DB_LOCK_TIMEOUT; a read that runs past
BRIDGE_DB_READ_TIMEOUT is stopped, and the admin API answers it 503 query_timeout.
On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlalchemy import insert, text

from app.errors import QueryTimedOut
from app.storage.database import Database
from app.storage.reads import READERS
from app.storage.schema import events
from app.storage.store import Store
from tests.support.erathos import webhook_body
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.reads import HeldReads
from tests.support.stores import opened, record
from tests.support.tokens import ADMIN_TOKEN, auth

pytestmark = [pytest.mark.anyio, pytest.mark.every_database]


async def test_reads_held_open_on_every_read_connection_delay_no_event_past_its_deadline(
    database_url: str,
) -> None:
    """Every read connection is busy with an open read transaction (on SQLite the old
    single connection would have made each write wait for it, and fail at its lock
    deadline): events are still committed, each within BRIDGE_DB_LOCK_TIMEOUT (a write
    past it fails with StoreUnavailable), while the reads are still open."""
    async with opened(database_url, lock_timeout=0.5, read_timeout=120) as database:
        store = Store(database)
        held = HeldReads(database)
        async with held as reads:
            stored = [await record(store, f"while-held-{i}") for i in range(20)]
            still_open = [not task.done() for task in reads]
            await held.release()
            finished = await asyncio.gather(*reads)

        assert all(r.created for r in stored)
        assert still_open == [True] * READERS
        assert finished == [1] * READERS
        assert (
            await database.read(lambda c: c.execute(text("SELECT count(*) FROM events")).scalar())
            == 20
        )


async def test_a_runaway_read_is_stopped_at_its_deadline_and_writes_go_on(
    database_url: str,
) -> None:
    forever = (
        "SELECT pg_sleep(600)"
        if database_url.startswith("postgresql")
        else "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) "
        "SELECT count(*) FROM n"
    )
    async with opened(database_url, read_timeout=0.2) as database:
        store = Store(database)
        with pytest.raises(QueryTimedOut, match="BRIDGE_DB_READ_TIMEOUT"):
            await database.read(lambda conn: conn.execute(text(forever)).scalar())
        recorded = await record(store, "after-the-runaway")
        count = await database.read(
            lambda conn: conn.execute(text("SELECT count(*) FROM events")).scalar()
        )

    assert recorded.created
    assert count == 1


async def _many_events(database: Database, count: int) -> None:
    rows = [
        {
            "id": uuid.uuid4().hex,
            "execution_id": str(uuid.uuid4()),
            "received_at": 1_800_000_000.0 + i,
            "payload": "{}",
            "state": "delivered",
        }
        for i in range(count)
    ]
    await database.run(lambda conn: conn.execute(insert(events), rows))


async def test_the_admin_api_answers_a_read_past_its_deadline_503_query_timeout(
    make_settings: SettingsFactory,
) -> None:
    """A search through every execution id of 30,000 events cannot finish within 1 ms:
    it is stopped and answered 503 ``query_timeout`` naming the setting, and the webhook
    beside it is still stored."""
    settings = make_settings(admin_token=ADMIN_TOKEN, db_read_timeout="1ms")
    database = await Database.open(settings.database_url)
    try:
        await _many_events(database, 30_000)
    finally:
        await database.close()
    async with open_client(settings) as client:
        search = await client.get("/events?execution_id=no-such-id", headers=auth(ADMIN_TOKEN))
        sent = await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())

    assert search.status_code == 503
    error = search.json()["error"]
    assert error["code"] == "query_timeout"
    assert "BRIDGE_DB_READ_TIMEOUT" in error["message"]
    assert search.headers["retry-after"] == "5"
    assert sent.status_code in (201, 202), sent.text


async def test_a_read_waiting_for_a_free_connection_is_stopped_at_its_deadline(
    tmp_path: Path,
) -> None:
    """SQLite: every read thread is held by a read that outlives its deadline (in Python,
    where the progress handler cannot stop it): the next read is answered QueryTimedOut
    at its own deadline, never left waiting for a thread. (On PostgreSQL the reads'
    pool_timeout does the same.)"""
    async with opened(f"sqlite:///{tmp_path / 'bridge.db'}", read_timeout=0.3) as database:
        held = HeldReads(database)
        async with held as holding:
            with pytest.raises(QueryTimedOut):
                await database.read(lambda conn: conn.execute(text("SELECT 1")).scalar())
        outcomes = await asyncio.gather(*holding, return_exceptions=True)
    assert all(isinstance(outcome, QueryTimedOut) for outcome in outcomes), outcomes

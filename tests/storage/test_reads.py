"""Operators' reads never stand in a webhook's way: held open on every read connection,
the store still commits events within BRIDGE_DB_LOCK_TIMEOUT; a read that runs past
BRIDGE_DB_READ_TIMEOUT is stopped, and the admin API answers it 503 query_timeout.
On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import insert, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from app.errors import QueryTimedOut
from app.storage.database import Database
from app.storage.reads import READERS
from app.storage.schema import events
from app.storage.store import Store
from tests.support.erathos import webhook_body
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.stores import opened, record
from tests.support.tokens import ADMIN_TOKEN, auth

pytestmark = [pytest.mark.anyio, pytest.mark.every_database]

HELD_KEY = 0x52454144  # the advisory lock a held PostgreSQL read waits on


class HeldReads:
    """Reads that stay open, each in its own read transaction, until released: on SQLite
    in their threads (a blocked work), on PostgreSQL in the server (waiting for an
    advisory lock this test holds), so neither blocks the event loop."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.released = threading.Event()
        self.started = threading.Semaphore(0)
        self._lock_holder: Any = None

    async def __aenter__(self) -> list[asyncio.Task[int]]:
        if self.database.postgres:
            assert isinstance(self.database.engine, AsyncEngine)
            self._lock_holder = await self.database.engine.connect()
            await self._lock_holder.execute(text(f"SELECT pg_advisory_lock({HELD_KEY})"))
        tasks = [asyncio.create_task(self.database.read(self._hold)) for _ in range(READERS)]
        for _ in range(READERS):
            await asyncio.to_thread(self.started.acquire)
        return tasks

    def _hold(self, conn: Connection) -> int:
        conn.execute(text("SELECT count(*) FROM events")).scalar()  # a snapshot is taken
        self.started.release()
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"SELECT pg_advisory_lock_shared({HELD_KEY})"))
        else:
            self.released.wait()
        return 1

    async def __aexit__(self, *_: object) -> None:
        await self.release()

    async def release(self) -> None:
        self.released.set()
        if self._lock_holder is not None:
            await self._lock_holder.execute(text(f"SELECT pg_advisory_unlock({HELD_KEY})"))
            await self._lock_holder.close()
            self._lock_holder = None


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

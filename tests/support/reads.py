"""Reads held open on every one of a store's read connections, until released: what
shows that operators' reads stand in no write's way, and what a reader of the store
does when none is free."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from app.storage.database import Database
from app.storage.reads import READERS

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

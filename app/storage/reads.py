"""Operators' reads (admin API, console, CLI, gauges) on connections of their own, so
that no read, however long, ever waits in front of a webhook's write, and each stops
at ``BRIDGE_DB_READ_TIMEOUT`` with :class:`app.storage.records.QueryTimedOut`.

SQLite: a few read-only connections, each used from a thread of a small pool, never the
writer thread; WAL lets them read a snapshot while the writer commits. The deadline is
kept by SQLite's progress handler, which interrupts the statement running past it.
PostgreSQL: a small pool apart from the writes' pool, so reads cannot take the
connections writes need, with ``statement_timeout`` and no parallel workers.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, create_engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.errors import QueryTimedOut

T = TypeVar("T")
READERS = 2  # connections (and, on SQLite, threads) for reads
# SQLite calls the progress handler every this many virtual machine instructions: often
# enough to stop within a few milliseconds of the deadline, rarely enough that taking the
# GIL for it costs the event loop nothing noticeable.
PROGRESS_EVERY = 50_000
# Past the deadline, how long a caller still waits for the read's own progress handler
# to stop it (and answer QueryTimedOut itself) before it stops waiting.
DRIFT = 0.5
QUERY_CANCELED = "57014"  # PostgreSQL's SQLSTATE for a statement stopped by its timeout


class Reads:
    """Where reads run, and their deadline in seconds."""

    engine: Engine | AsyncEngine

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    async def run(self, work: Callable[[Connection], T]) -> T:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def timed_out(self) -> QueryTimedOut:
        return QueryTimedOut(
            f"the query ran longer than BRIDGE_DB_READ_TIMEOUT ({self.timeout:g} s) and "
            "was stopped; narrow it (a state, a table, a time range) or try again"
        )


class SqliteReads(Reads):
    """Read-only connections to the SQLite file, used from threads of their own."""

    engine: Engine

    def __init__(self, url: str, timeout: float, lock_timeout: float) -> None:
        super().__init__(timeout)
        parsed = make_url(url).set(drivername="sqlite+pysqlite")
        self.engine = create_engine(
            parsed,
            pool_size=READERS,
            max_overflow=0,
            connect_args={"check_same_thread": False},
        )
        self._threads = ThreadPoolExecutor(READERS, thread_name_prefix="bridge-read")
        busy_ms = max(1, int(lock_timeout * 1000))

        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA query_only = ON")  # a read never writes, by mistake either
            cursor.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(conn: Any) -> None:
            # A deferred transaction: one snapshot for all of a read's statements, and no
            # lock that a write would wait for (WAL).
            conn.exec_driver_sql("BEGIN")

    async def run(self, work: Callable[[Connection], T]) -> T:
        # The deadline counts from here: a read that waited for a free thread (every one
        # busy with other reads) has only what is left of it, as on PostgreSQL's pool.
        deadline = time.monotonic() + self.timeout
        done = self._threads.submit(self._read, work, deadline)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(done), self.timeout + DRIFT)
        except TimeoutError:
            # Still waiting for a thread (now cancelled), or a work whose Python part the
            # progress handler cannot stop (it ends in its thread; no one waits for it).
            raise self.timed_out() from None

    def _read(self, work: Callable[[Connection], T], deadline: float) -> T:
        if time.monotonic() > deadline:
            raise self.timed_out()  # a thread came free too late
        with self.engine.connect() as conn:
            driver = conn.connection.driver_connection
            assert isinstance(driver, sqlite3.Connection)
            driver.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_EVERY)
            try:
                with conn.begin():
                    return work(conn)
            except DBAPIError as exc:
                if "interrupted" in str(exc.orig) and time.monotonic() > deadline:
                    raise self.timed_out() from exc
                raise
            finally:
                driver.set_progress_handler(None, 0)

    async def close(self) -> None:
        # A read still running ends by its deadline at the latest; the loop goes on meanwhile.
        await asyncio.to_thread(self._threads.shutdown, wait=True)
        self.engine.dispose()


class PostgresReads(Reads):
    """A pool of its own beside the writes' pool, every statement under a timeout, on an
    event loop of its own in a thread of its own: turning a page of rows into records
    (JSON payloads and all) then never holds up the service's event loop for longer
    than Python's switch interval."""

    engine: AsyncEngine

    def __init__(self, engine: AsyncEngine, timeout: float) -> None:
        super().__init__(timeout)
        self.engine = engine
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="bridge-read", daemon=True
        )
        self._thread.start()

    @classmethod
    def open(
        cls, url: Any, timeout: float, connect_timeout: float, application_name: str
    ) -> PostgresReads:
        engine = create_async_engine(
            url,
            pool_size=READERS,
            max_overflow=0,
            # Every read connection busy: this read waits at most its own deadline.
            pool_timeout=timeout,
            pool_pre_ping=True,
            connect_args={
                "timeout": connect_timeout,  # opening one is the writes' business too
                "server_settings": {
                    "application_name": f"{application_name} (reads)",
                    "statement_timeout": str(max(1, int(timeout * 1000))),
                    # A read takes no background workers either: those are the server's,
                    # shared with the writes.
                    "max_parallel_workers_per_gather": "0",
                    "default_transaction_read_only": "on",
                },
            },
        )
        return cls(engine, timeout)

    async def run(self, work: Callable[[Connection], T]) -> T:
        done = asyncio.run_coroutine_threadsafe(self._read(work), self._loop)
        return await asyncio.wrap_future(done)

    async def _read(self, work: Callable[[Connection], T]) -> T:
        try:
            async with self.engine.begin() as conn:
                return await conn.run_sync(work)
        except PoolTimeout as exc:
            raise self.timed_out() from exc
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == QUERY_CANCELED:
                raise self.timed_out() from exc
            raise

    async def close(self) -> None:
        disposed = asyncio.run_coroutine_threadsafe(self.engine.dispose(), self._loop)
        await asyncio.wrap_future(disposed)
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join)
        self._loop.close()

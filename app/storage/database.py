"""The database: an engine for SQLite or PostgreSQL, and :class:`Database`, which runs
one transaction on it (:mod:`app.storage.schema` has the tables).

SQLite (the embedded default, one replica) runs in WAL mode on one connection of
Python's own ``sqlite3``, used from one writer thread of its own that commits what
arrives together in one transaction; ``BRIDGE_DURABILITY`` decides whether a commit
waits for an fsync. PostgreSQL (any number of replicas) runs on asyncpg with a bounded
pool that replaces connections that died with the server. A driver's error, whatever
its kind, reaches callers as :class:`StoreUnavailable`. The queries are in
:mod:`app.storage.store` (one event's path) and :mod:`app.storage.history` (the operators').
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Table,
    event,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, create_engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql import ClauseElement

from app.config import Durability
from app.config.values import database_kind
from app.errors import StoreUnavailable
from app.storage.reads import PostgresReads, Reads, SqliteReads
from app.storage.schema import dialect_insert, migrate
from app.storage.wal import Checkpointer, enable_wal

T = TypeVar("T")
APPLICATION_NAME = "erathos-prefect-bridge"


def display_url(url: str) -> str:
    """The database URL with its password masked, for logs and ``check``'s output."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def _postgres_url(url: str) -> URL:
    parsed = make_url(url).set(drivername="postgresql+asyncpg")
    query = dict(parsed.query)
    if "sslmode" in query and "ssl" not in query:
        # libpq's spelling (postgres://...?sslmode=require) is asyncpg's ``ssl``.
        query["ssl"] = query.pop("sslmode")
        parsed = parsed.set(query=query)
    return parsed


def _postgres_engine(
    url: str, lock_timeout: float, pool_size: int, pool_timeout: float
) -> AsyncEngine:
    lock_ms = max(1, int(lock_timeout * 1000))
    return create_async_engine(
        _postgres_url(url),
        # At most pool_size connections per replica; a request that finds none free
        # within pool_timeout gets StoreUnavailable (503) rather than a hang.
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout,
        # A connection that died with the server (a restart, a failover) is noticed at
        # checkout and replaced, so the service recovers without a restart of its own.
        pool_pre_ping=True,
        connect_args={
            "timeout": pool_timeout,  # opening a connection, not only waiting for one
            "server_settings": {
                "application_name": APPLICATION_NAME,
                # BRIDGE_DB_LOCK_TIMEOUT: how long a statement waits for a lock (another
                # replica's, an operator's) before it fails and the webhook answers 503;
                # twice that ends any statement stuck for another reason the same way.
                "lock_timeout": str(lock_ms),
                "statement_timeout": str(2 * lock_ms),
                # An acknowledged event is in the server's WAL on its disk (and on its
                # synchronous standbys, if it has any) whatever the server's default;
                # this is PostgreSQL's own default, stated so a server set to off
                # cannot weaken it.
                "synchronous_commit": "on",
            },
        },
    )


def _sqlite_engine(url: str, durability: Durability, lock_timeout: float) -> Engine:
    # BRIDGE_DURABILITY applies here only: on PostgreSQL what a commit survives is the
    # server's own durability (its fsync and replication settings).
    parsed = make_url(url).set(drivername="sqlite+pysqlite")
    database = parsed.database
    if database and database != ":memory:":
        try:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create the directory of {database}: {exc}") from exc
    # One connection: SQLite has one writer anyway, and a single connection makes
    # every transaction in this process strictly sequential (no SQLITE_BUSY inside it).
    # The store uses it from one thread, but closes it from whichever disposes it.
    engine = create_engine(
        parsed,
        pool_size=1,
        max_overflow=0,
        pool_timeout=30,
        connect_args={"check_same_thread": False},
    )
    busy_timeout_ms = int(lock_timeout * 1000)
    synchronous = "FULL" if durability is Durability.POWER else "NORMAL"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's BEGIN below control transactions instead of the driver.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # How long a write waits for another process's lock before we answer 503.
        cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        # Before the first table: a new file gives freed pages back (app.storage.maintenance);
        # on an existing one it changes nothing.
        cursor.execute("PRAGMA auto_vacuum = INCREMENTAL")
        enable_wal(cursor, lock_timeout)
        # WAL + NORMAL survives a crash of the process (kill -9); FULL also a power loss.
        cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.execute("PRAGMA foreign_keys = ON")
        # A large store's indexes stay in memory, and the WAL is checkpointed by
        # app.storage.wal.Checkpointer's thread, never by a commit on the request path.
        cursor.execute("PRAGMA cache_size = -65536")
        cursor.execute("PRAGMA wal_autocheckpoint = 0")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front: another process (the CLI) waits on
        # busy_timeout instead of failing with a deadlock on lock upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def sqlite_sql(statement: ClauseElement) -> str:
    """``statement`` as SQLite's own SQL with ``:named`` parameters, for a statement so
    hot that it goes to the driver's cursor directly (its parameters must then be the
    column values as stored: no type of the schema may convert them on SQLite)."""
    return str(statement.compile(dialect=sqlite.dialect(paramstyle="named")))


class Database:
    """An engine, and how one transaction runs on it: on SQLite in the writer thread (one
    hop to it per transaction, where an asyncio driver makes one per statement and
    fetch), on PostgreSQL through asyncpg (``run_sync``). Each transaction is a function
    of a blocking SQLAlchemy connection."""

    def __init__(self, engine: AsyncEngine | Engine, lock_timeout: float = 5.0) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self._writer = None if isinstance(engine, AsyncEngine) else _Writer(engine, lock_timeout)
        self._closed = False
        self.reads: Reads | None = None  # none: reads take the writes' way (app.storage.reads)
        self.checkpoints: Checkpointer | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        durability: Durability = Durability.CRASH,
        *,
        lock_timeout: float = 5.0,
        pool_size: int = 5,
        pool_timeout: float = 10.0,
        read_timeout: float = 5.0,
    ) -> Database:
        """Open the database ``url`` names (SQLite or PostgreSQL) and create or upgrade
        its schema. ``pool_size`` and ``pool_timeout`` apply to PostgreSQL; SQLite keeps
        one connection for writes. :meth:`read` has connections of its own, each read
        stopped after ``read_timeout`` seconds."""
        if database_kind(url) == "postgresql":
            engine: AsyncEngine | Engine = _postgres_engine(
                url, lock_timeout, pool_size, pool_timeout
            )
        else:
            engine = _sqlite_engine(url, durability, lock_timeout)
        database = cls(engine, lock_timeout)
        try:
            await database.run(migrate)
            if isinstance(engine, AsyncEngine):
                database.reads = PostgresReads.open(
                    _postgres_url(url), read_timeout, pool_timeout, APPLICATION_NAME
                )
            elif engine.url.database not in (None, "", ":memory:"):
                database.reads = SqliteReads(url, read_timeout, lock_timeout)
                database.checkpoints = Checkpointer(engine.url.database)
        except BaseException:
            await database.close()
            raise
        return database

    async def close(self) -> None:
        self._closed = True
        if self.reads is not None:
            await self.reads.close()
        if self.checkpoints is not None:
            await asyncio.to_thread(self.checkpoints.stop)
        if isinstance(self.engine, AsyncEngine):
            await self.engine.dispose()
            return
        assert self._writer is not None
        await asyncio.wrap_future(self._writer.stop())

    def insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """The dialect's INSERT, which has ``ON CONFLICT`` (both spell it alike)."""
        return dialect_insert(self.engine.dialect, table)

    async def run(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` in one transaction: committed when it returns, rolled back
        when it raises. A driver's error is :class:`StoreUnavailable`; any other exception
        (a bug, or the store's own domain error) passes through as it is."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        with _driver_errors():
            if isinstance(self.engine, AsyncEngine):
                async with self.engine.begin() as conn:
                    return await conn.run_sync(work)
            assert self._writer is not None
            return await asyncio.wrap_future(self._writer.submit(work))

    async def read(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` in one read-only transaction on the reads' connections,
        never in a write's way; :class:`app.storage.records.QueryTimedOut` past its deadline."""
        if self.reads is None:
            return await self.run(work)
        if self._closed:
            raise StoreUnavailable("the store is closed")
        with _driver_errors():
            return await self.reads.run(work)


_Submitted = tuple[Callable[[Connection], Any], Future[Any], float]  # work, outcome, deadline


class _Writer:
    """SQLite's one thread: it runs the transactions one after another, and what arrived
    while one ran it commits together (group commit), so a burst of webhooks pays for one
    BEGIN IMMEDIATE and one COMMIT between many. Should one work in such a group fail,
    the group is rolled back and each work runs again on its own, so a failure is only
    ever its own (each work is a function of the connection alone).

    Every work has a deadline, ``lock_timeout`` after it was submitted: the time it
    waits in the queue counts, and a group waits for another process's lock no longer
    than its earliest deadline. A group that cannot begin fails together (no work's own
    failure: rerun one by one, each would wait again), so a burst behind a held lock is
    refused within one timeout, not one timeout after another."""

    GROUP = 64  # the most works committed together
    # A group is committed once its works have run this long, even when more are queued:
    # the first work's caller waits for the whole group's commit, so a group's size is
    # bounded by the latency it adds, not only by its count. The rest go in the next one.
    GROUP_SECONDS = 0.005

    def __init__(self, engine: Engine, lock_timeout: float) -> None:
        self.engine = engine
        self.lock_timeout = lock_timeout
        self._queue: queue.SimpleQueue[_Submitted | None] = queue.SimpleQueue()
        self._stopped: Future[None] = Future()
        self._closing = False
        threading.Thread(target=self._serve, name="bridge-sqlite", daemon=True).start()

    def submit(self, work: Callable[[Connection], T]) -> Future[T]:
        if self._closing:
            raise StoreUnavailable("the store is closed")
        done: Future[T] = Future()
        self._queue.put((work, done, time.monotonic() + self.lock_timeout))
        return done

    def stop(self) -> Future[None]:
        """Finish what was submitted, close the connection; done when closed."""
        self._closing = True
        self._queue.put(None)
        return self._stopped

    def _serve(self) -> None:
        try:
            stopping = False
            later: list[_Submitted] = []  # what the last group's time bound left out
            while not stopping or later:
                arrived = [] if later else [self._queue.get()]
                while len(later) + len(arrived) < self.GROUP:
                    try:
                        arrived.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stopping |= None in arrived
                running = later + [
                    item
                    for item in arrived
                    if item is not None and item[1].set_running_or_notify_cancel()
                ]
                left = self._together(running)
                if left is None:
                    left = []
                    for item in running:
                        self._together([item])  # one work: nothing is left over
                later = left
        finally:
            self.engine.dispose()
            self._stopped.set_result(None)

    def _together(self, group: list[_Submitted]) -> list[_Submitted] | None:
        """Run ``group`` in one transaction and settle its futures; what is left of it
        once ``GROUP_SECONDS`` have passed is not run and is returned, to run next. None,
        settling none, when a work failed with more than one work in it."""
        now = time.monotonic()
        for _, done, deadline in group:
            if deadline <= now and not done.done():
                done.set_exception(
                    StoreUnavailable(
                        "database is locked: no turn within BRIDGE_DB_LOCK_TIMEOUT "
                        f"({self.lock_timeout:g} s)"
                    )
                )
        group = [item for item in group if not item[1].done()]
        if not group:
            return []
        began = False
        results: list[Any] = []
        try:
            with self.engine.connect() as conn:
                _busy_timeout(conn, min(deadline for *_, deadline in group) - now)
                with conn.begin():
                    began = True
                    bound = time.monotonic() + self.GROUP_SECONDS
                    for work, _, _ in group:
                        results.append(work(conn))
                        if time.monotonic() >= bound:
                            break
        except BaseException as exc:  # whatever it is, the thread lives on to serve the rest
            if not began:  # the lock is held elsewhere, or the file is gone: nobody's own
                for _, done, _ in group:
                    error = StoreUnavailable(_driver_message(exc))
                    error.__cause__ = exc
                    done.set_exception(error)
                return []
            if len(group) > 1:
                return None
            group[0][1].set_exception(exc)
            return []
        for (_, done, _), result in zip(group, results, strict=False):
            done.set_result(result)
        return group[len(results) :]


def _busy_timeout(conn: Connection, seconds: float) -> None:
    """How long BEGIN IMMEDIATE may wait for another process's write lock (SQLite's busy
    handler), set on the driver's connection itself: through SQLAlchemy the statement
    would open the transaction it is meant to precede."""
    driver = conn.connection.driver_connection
    assert driver is not None
    driver.execute(f"PRAGMA busy_timeout = {max(1, int(seconds * 1000))}")


_DRIVER_MODULES = frozenset({"asyncpg", "sqlite3"})


@contextmanager
def _driver_errors() -> Iterator[None]:
    """A driver's error, whatever its kind, as StoreUnavailable; any other exception (a
    bug, or the store's own domain error) as it is."""
    try:
        yield
    except (SQLAlchemyError, OSError) as exc:  # OSError: refused, reset, timed out
        raise StoreUnavailable(_driver_message(exc)) from exc
    except Exception as exc:
        # A driver error SQLAlchemy did not wrap (asyncpg raises some while it connects).
        if type(exc).__module__.partition(".")[0] in _DRIVER_MODULES:
            raise StoreUnavailable(_driver_message(exc)) from exc
        raise


def _driver_message(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    # asyncpg's errors arrive wrapped twice (SQLAlchemy's adapter, then DBAPIError).
    original = getattr(original, "__cause__", None) or original
    return f"{type(original).__name__}: {original}".strip()

"""The database: the schema's tables, and an engine for SQLite or PostgreSQL.

SQLite (the embedded default, one replica) runs in WAL mode on one connection of
Python's own ``sqlite3``, which :class:`app.store.Store` uses from one thread of its
own; ``BRIDGE_DURABILITY`` decides whether a commit waits for an fsync. PostgreSQL
(any number of replicas) runs on asyncpg with a bounded pool that replaces
connections that died with the server. :mod:`app.store` holds every query.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
)
from sqlalchemy.engine import URL, Engine, create_engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.settings import Durability, database_kind

APPLICATION_NAME = "erathos-prefect-bridge"


class Str(TypeDecorator[str]):
    """Text any dialect can store: PostgreSQL refuses NUL characters in text (SQLite
    keeps them), so there they become U+FFFD instead of failing every retry with a 503.
    Unbounded on purpose: SQLite ignores lengths, PostgreSQL would enforce them."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is not None and dialect.name == "postgresql" and "\x00" in value:
            return value.replace("\x00", "\ufffd")
        return value


metadata = MetaData()

meta = Table(
    "bridge_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Str, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("execution_id", Str, nullable=False, unique=True),
    Column("received_at", Float, nullable=False, index=True),  # epoch seconds (double)
    Column("job_id", Str, index=True),
    Column("schema_name", Str),
    Column("table_name", Str),
    Column("status", Str),
    Column("payload", Str, nullable=False),
    Column("ignored_reason", Str),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("event_id", String(32), ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
    Column("route", Str, nullable=False),
    Column("connection", Str, nullable=False),
    Column("idempotency_key", Str, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("window_started_at", Float, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_owner", Str),
    Column("lease_expires_at", Float),
    Column("flow_run_id", Str),
    Column("flow_run_url", Str),
    Column("last_status_code", Integer),
    Column("last_error", Str),
    Column("finished_at", Float),
    UniqueConstraint("event_id", "route"),
    Index("deliveries_due", "state", "connection", "next_attempt_at"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("delivery_id", String(32), ForeignKey("deliveries.id", ondelete="CASCADE"), index=True),
    Column("number", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("status_code", Integer),
    Column("error", Str),
    Column("response_excerpt", Str),
    Column("retry_in", Float),
)


class StoreUnavailable(Exception):
    """The store cannot read or commit right now (locked, read-only, disk full, gone,
    restarting): the caller answers 503 or tries again later."""


def display_url(url: str) -> str:
    """The database URL with its password masked, for logs and ``check``'s output."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def open_engine(
    url: str, durability: Durability, lock_timeout: float, pool_size: int, pool_timeout: float
) -> AsyncEngine | Engine:
    """The engine for the store ``url`` names: PostgreSQL's (asyncio), or SQLite's
    (blocking, for one thread that runs every transaction)."""
    if database_kind(url) == "postgresql":
        return _postgres_engine(url, lock_timeout, pool_size, pool_timeout)
    return _sqlite_engine(url, durability, lock_timeout)


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


def _enable_wal(cursor: Any, lock_timeout: float) -> None:
    """``PRAGMA journal_mode = WAL``, retried until ``lock_timeout``. Switching a new
    database to WAL needs its exclusive lock, and SQLite answers "database is locked" at
    once, without its busy handler, while another process (a replica starting on the
    same file) holds it. Runs on the connection's own thread, so sleeping is fine."""
    deadline = time.monotonic() + lock_timeout
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


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
        _enable_wal(cursor, lock_timeout)
        # WAL + NORMAL survives a crash of the process (kill -9); FULL also a power loss.
        cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front: another process (the CLI) waits on
        # busy_timeout instead of failing with a deadlock on lock upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine

"""A month of loads for figure 10: a store of ``count`` realistic events made fast through
the store's own schema and records (batched inserts, no webhook), cached on disk between
runs because filling a million takes minutes.

Each event is one Erathos body (bench/body.py) for one of ``TABLES`` tables, loaded in
turn over ``DAYS`` days up to the fill's time, with one delivery and one attempt: 96 %
delivered, 3 % dead, 1 % still pending (due in a month, so no run tries them).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # (no stubs; COPY is asyncpg's own)
from sqlalchemy import insert

from app.ids import new_id
from app.routing.router import DEFAULT_CONNECTION, DEFAULT_ROUTE
from app.storage.database import Database, sqlite_sql
from app.storage.records import DeliveryState, EventState
from app.storage.schema import SCHEMA_VERSION, attempts, deliveries, events
from bench.body import body_parts, execution_id
from bench.databases import POSTGRES_SERVER, _fetch, database_url

TABLES = 700
DAYS = 30
BATCH = 20_000
FILL_NONCE = 0x3FFF_FFF0  # execution ids of the fill (bench/body.py), apart from any load's
CACHE_PREFIX = "bridge_bench_scale_cache_"
IDS = "t2"  # the fill's form: ids time first (app/ids.py), the index events_received


def state_of(i: int) -> DeliveryState:
    """96 % delivered, 3 % dead, 1 % pending, spread evenly over the month."""
    k = i % 100
    if k < 3:
        return DeliveryState.DEAD
    if k == 3:
        return DeliveryState.PENDING
    return DeliveryState.DELIVERED


def table_of(i: int) -> str:
    return f"table_{i % TABLES:03d}"


def rows(count: int, now: float) -> Iterator[tuple[list[dict[str, Any]], ...]]:
    """(events, deliveries, attempts) rows, ``BATCH`` events at a time, oldest first."""
    prefix, suffix = body_parts()
    start, step = now - DAYS * 86400, DAYS * 86400 / count
    outcomes = {
        DeliveryState.DELIVERED: ("delivered", 201),
        DeliveryState.DEAD: ("permanent", 422),
        DeliveryState.PENDING: ("transient", 503),
    }
    for first in range(0, count, BATCH):
        batch: tuple[list[dict[str, Any]], ...] = ([], [], [])
        for i in range(first, min(count, first + BATCH)):
            at = start + i * step
            state = state_of(i)
            event_id, delivery_id = new_id(at), new_id(at)
            key = execution_id(FILL_NONCE, i)
            payload = json.loads(prefix + key + suffix)
            payload["table_name"] = table_of(i)
            batch[0].append(
                {
                    "id": event_id,
                    "execution_id": key,
                    "received_at": at,
                    "job_id": f"job-{i % TABLES:03d}",
                    "schema_name": "public",
                    "table_name": table_of(i),
                    "status": "finished",
                    "payload": json.dumps(payload, separators=(",", ":")),
                    "ignored_reason": None,
                    "state": EventState(state.value).value,
                }
            )
            outcome, status = outcomes[state]
            finished = None if state is DeliveryState.PENDING else at + 0.05
            ran = state is DeliveryState.DELIVERED
            batch[1].append(
                {
                    "id": delivery_id,
                    "event_id": event_id,
                    "route": DEFAULT_ROUTE,
                    "connection": DEFAULT_CONNECTION,
                    "idempotency_key": key,
                    "state": state.value,
                    "attempts": 1,
                    "created_at": at,
                    "window_started_at": at,
                    "next_attempt_at": now + DAYS * 86400 if finished is None else at,
                    "lease_owner": None,
                    "lease_expires_at": None,
                    "flow_run_id": str(new_id()) if state is DeliveryState.DELIVERED else None,
                    "flow_run_url": None,
                    "last_status_code": status,
                    "last_error": None if status == 201 else f"HTTP {status}",
                    "finished_at": finished,
                    "ordinal": 0,
                    "attempts_before_replay": 0,
                    # Followed to its end: a delivered run COMPLETED a minute later.
                    "run_state": "completed" if ran else None,
                    "run_state_at": at + 60 if ran else None,
                    "run_started_at": at + 5 if ran else None,
                    "run_ended_at": at + 60 if ran else None,
                    "follow_due_at": None,
                    "follow_owner": None,
                }
            )
            batch[2].append(
                {
                    "id": i + 1,
                    "delivery_id": delivery_id,
                    "number": 1,
                    "started_at": at,
                    "duration_ms": 12.5,
                    "outcome": outcome,
                    "status_code": status,
                    "error": None if status == 201 else f"HTTP {status}",
                    "response_excerpt": '{"detail":"..."}' if status != 201 else None,
                    "retry_in": 60.0 if state is DeliveryState.PENDING else None,
                }
            )
        yield batch


async def _create_schema(url: str) -> None:
    database = await Database.open(url)
    await database.close()


def fill_sqlite(path: Path, count: int) -> float:
    """A new SQLite store of ``count`` events at ``path``; the seconds it took."""
    started = time.monotonic()
    path.unlink(missing_ok=True)
    asyncio.run(_create_schema(f"sqlite:///{path}"))
    statements = [sqlite_sql(insert(table)) for table in (events, deliveries, attempts)]
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous = OFF")
        db.execute("PRAGMA cache_size = -1000000")
        for batch in rows(count, time.time()):
            db.execute("BEGIN")
            for sql, values in zip(statements, batch, strict=True):
                db.executemany(sql, values)
            db.execute("COMMIT")
        db.execute("ANALYZE")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return time.monotonic() - started


async def _fill_postgres(name: str, count: int) -> None:
    await _create_schema(database_url(name))
    connection = await asyncpg.connect(database_url(name))
    try:
        for batch in rows(count, time.time()):
            async with connection.transaction():
                for table, values in zip((events, deliveries, attempts), batch, strict=True):
                    columns = [c.name for c in table.c]
                    records = [tuple(row[c] for c in columns) for row in values]
                    await connection.copy_records_to_table(
                        table.name, records=records, columns=columns
                    )
        await connection.execute(
            "SELECT setval(pg_get_serial_sequence('attempts', 'id'), max(id)) FROM attempts"
        )
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


def cached_sqlite(cache: Path, count: int) -> tuple[Path, float | None]:
    """The cached SQLite fill (made now if missing: then the seconds it took)."""
    path = cache / f"scale-v{SCHEMA_VERSION}{IDS}-{count}.db"
    if path.exists():
        return path, None
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    seconds = fill_sqlite(partial, count)
    partial.rename(path)
    return path, seconds


def copy_sqlite(cached: Path, to: Path) -> None:
    shutil.copyfile(cached, to)


def cached_postgres(count: int) -> tuple[str, float | None]:
    """The cached PostgreSQL fill, a database kept between runs (made now if missing)."""
    name = f"{CACHE_PREFIX}v{SCHEMA_VERSION}{IDS}_{count}"
    found = asyncio.run(
        _fetch(POSTGRES_SERVER, f"SELECT 1 FROM pg_database WHERE datname = '{name}'")  # noqa: S608
    )
    if found:
        return name, None
    started = time.monotonic()
    partial = f"{name}_partial"
    statements = [
        f'DROP DATABASE IF EXISTS "{partial}" WITH (FORCE)',
        f'CREATE DATABASE "{partial}"',
    ]
    for statement in statements:
        asyncio.run(_fetch(POSTGRES_SERVER, statement, autocommit=True))
    asyncio.run(_fill_postgres(partial, count))
    rename = f'ALTER DATABASE "{partial}" RENAME TO "{name}"'
    asyncio.run(_fetch(POSTGRES_SERVER, rename, autocommit=True))
    return name, time.monotonic() - started


def copy_postgres(cached: str, to: str) -> None:
    """A copy of the cached database (a template copy: a file copy on the server)."""
    statement = f'CREATE DATABASE "{to}" TEMPLATE "{cached}"'
    asyncio.run(_fetch(POSTGRES_SERVER, statement, autocommit=True))

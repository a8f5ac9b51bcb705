"""The bench's databases: throw-away PostgreSQL databases on the machine's server (for a
Prefect server on PostgreSQL and for the service's shared store), and read-only queries of
a service's store, on SQLite or PostgreSQL alike."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

# The local server: trust authentication for ``postgres`` on 127.0.0.1 (as in CI).
POSTGRES_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
PREFIX = "bridge_bench_"


def _asyncpg(url: str) -> str:
    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


async def _fetch(url: str, *statements: str, autocommit: bool = False) -> list[tuple[Any, ...]]:
    """Run ``statements`` on one connection; the rows of the last."""
    options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    engine = create_async_engine(_asyncpg(url), **options)
    rows: list[tuple[Any, ...]] = []
    try:
        async with engine.connect() as conn:
            for statement in statements:
                result = await conn.execute(text(statement))
                rows = [tuple(row) for row in result] if result.returns_rows else []
    finally:
        await engine.dispose()
    return rows


def create_database(purpose: str) -> str:
    """A new empty database on the local server; its name (``bridge_bench_<purpose>_...``)."""
    name = f"{PREFIX}{purpose}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_fetch(POSTGRES_SERVER, f'CREATE DATABASE "{name}"', autocommit=True))
    return name


def drop_database(name: str) -> None:
    """Drop a database :func:`create_database` made, whoever is still connected to it."""
    assert name.startswith(PREFIX), name
    statement = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    asyncio.run(_fetch(POSTGRES_SERVER, statement, autocommit=True))


def database_url(name: str, driver: str = "postgresql") -> str:
    """The URL of database ``name`` on the local server (``postgresql+asyncpg`` for Prefect,
    ``postgresql`` as the service's ``BRIDGE_DATABASE_URL`` is documented)."""
    return (
        make_url(POSTGRES_SERVER)
        .set(drivername=driver, database=name)
        .render_as_string(hide_password=False)
    )


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """The rows of one read-only query of a service's store (``BRIDGE_DATABASE_URL``)."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        # Read-only, beside the running service: WAL lets it go on writing meanwhile.
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
            return db.execute(sql).fetchall()
    return asyncio.run(_fetch(url, sql))


def server_version() -> str:
    """The local PostgreSQL server's version, or why there is none."""
    try:
        rows = asyncio.run(_fetch(POSTGRES_SERVER, "SHOW server_version"))
    except Exception as exc:  # whatever the driver raises: the header says so, 8 and 9 fail
        return f"unreachable ({type(exc).__name__})"
    return str(rows[0][0]).split()[0]

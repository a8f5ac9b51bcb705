"""Throw-away PostgreSQL databases for the tests, on the server ``BRIDGE_TEST_DATABASE_URL``
names (``postgresql://postgres@127.0.0.1:5432/test`` in CI): each test that asks gets a
database of its own, created empty and dropped afterwards."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from sqlalchemy import Select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

SERVER_VARIABLE = "BRIDGE_TEST_DATABASE_URL"
BACKENDS = ("sqlite", "postgresql")


def configured_server() -> str | None:
    """The PostgreSQL server the tests may create databases on, if one is configured."""
    return os.environ.get(SERVER_VARIABLE) or None


def _asyncpg(url: str | URL) -> URL:
    return make_url(url).set(drivername="postgresql+asyncpg")


async def run_admin(server: str, *statements: str) -> None:
    engine = create_async_engine(_asyncpg(server), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


def create_database(server: str) -> str:
    """Create an empty database on ``server``; returns its URL (as the service takes it)."""
    name = f"bridge_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(run_admin(server, f'CREATE DATABASE "{name}"'))
    return make_url(server).set(database=name).render_as_string(hide_password=False)


def drop_database(server: str, url: str) -> None:
    """Drop a database :func:`create_database` made, whoever is still connected to it
    (a replica killed with ``kill -9`` may leave a session behind for a moment)."""
    name = make_url(url).database
    assert name is not None
    assert name.startswith("bridge_test_")
    asyncio.run(run_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def postgres_server() -> str:
    """The server of ``BRIDGE_TEST_DATABASE_URL``; skips the test when it is not set (and
    fails it in CI, where a skipped PostgreSQL run would hide that it never ran)."""
    server = configured_server()
    if server is None:
        message = f"{SERVER_VARIABLE} is not set: no PostgreSQL to test against"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return server


async def query(url: str, *statements: Select[int]) -> list[int]:
    """Counts from the shared database."""
    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        async with engine.connect() as conn:
            return [int(await conn.scalar(s) or 0) for s in statements]
    finally:
        await engine.dispose()

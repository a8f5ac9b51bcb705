"""While another process holds SQLite's write lock, BRIDGE_DB_LOCK_TIMEOUT bounds each
request's wait for the store, counted from the request: requests waiting together are
refused together, within about one timeout, never one timeout after another."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable
from contextlib import closing
from pathlib import Path

import pytest

from app.errors import StoreUnavailable
from app.storage.schema import events
from tests.support.erathos import webhook_body
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.stores import open_store, record, rows
from tests.support.tokens import auth
from tests.support.waiting import ManualClock

pytestmark = pytest.mark.anyio

LOCK_TIMEOUT = 0.5
AT_ONCE = 20


async def refused_within(operation: Awaitable[object]) -> float:
    """How long ``operation`` took to be refused as StoreUnavailable."""
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="locked"):
        await operation
    return time.monotonic() - started


async def test_operations_waiting_together_behind_a_held_lock_each_fail_within_the_timeout(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "bridge.db"
    store = await open_store(f"sqlite:///{path}", clock=clock, lock_timeout=LOCK_TIMEOUT)
    try:
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # held past the timeout of every operation
            waited = await asyncio.gather(
                *(refused_within(record(store)) for _ in range(AT_ONCE)),
                refused_within(store.check_writable()),
            )
            other.execute("ROLLBACK")
        recorded = await asyncio.gather(*(record(store) for _ in range(AT_ONCE)))
        stored = await rows(store.database, events)
    finally:
        await store.database.close()

    assert max(waited) < 2 * LOCK_TIMEOUT, waited
    assert [r.created for r in recorded] == [True] * AT_ONCE
    assert stored == AT_ONCE  # the refused ones left nothing


async def test_operations_waiting_for_a_lock_released_within_the_timeout_all_succeed(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "bridge.db"
    store = await open_store(f"sqlite:///{path}", clock=clock, lock_timeout=4 * LOCK_TIMEOUT)
    try:
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            asyncio.get_running_loop().call_later(LOCK_TIMEOUT, other.execute, "ROLLBACK")
            recorded = await asyncio.gather(*(record(store) for _ in range(AT_ONCE)))
    finally:
        await store.database.close()

    assert [r.created for r in recorded] == [True] * AT_ONCE


async def test_webhooks_behind_a_held_lock_are_each_answered_503_within_the_timeout(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(db_lock_timeout=f"{int(LOCK_TIMEOUT * 1000)}ms")
    bodies = [webhook_body(status="FAILED") for _ in range(AT_ONCE)]
    async with open_client(settings) as client:

        async def post(body: dict[str, str]) -> tuple[int, str | None, float]:
            started = time.monotonic()
            answer = await client.post("/webhooks/erathos", json=body, headers=auth())
            return answer.status_code, answer.headers.get("retry-after"), time.monotonic() - started

        with closing(sqlite3.connect(tmp_path / "bridge.db", isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            refused = await asyncio.gather(*(post(b) for b in bodies))
            other.execute("ROLLBACK")
        accepted = await asyncio.gather(*(post(b) for b in bodies))

    assert {(status, retry_after) for status, retry_after, _ in refused} == {(503, "5")}
    assert max(waited for *_, waited in refused) < 2 * LOCK_TIMEOUT, refused
    assert [status for status, *_ in accepted] == [202] * AT_ONCE

"""The store's size stays bounded: finished events past retention are pruned in batches
(dead letters and pending events stay), and a SQLite file made by this release gives the
freed pages back to the file system; one made before is left as it is."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from app.storage.database import Database
from app.storage.history import History
from app.storage.maintenance import prune_finished, reclaim_space
from app.storage.records import DeliveryState
from app.storage.schema import attempts, deliveries, events
from app.storage.store import Store
from tests.support.stores import finished, opened, record, rows
from tests.support.waiting import ManualClock, eventually

pytestmark = pytest.mark.anyio


@pytest.mark.every_database
async def test_pruning_in_batches_deletes_finished_events_past_retention_only(
    database: Database, store: Store, history: History, clock: ManualClock
) -> None:
    old_finished = [await finished(store, DeliveryState.DELIVERED) for _ in range(5)]
    old_ignored = await record(store, "old-ignored", routes=())
    old_dead = await finished(store, DeliveryState.DEAD)
    old_pending = await record(store, "old-pending")
    clock.advance(100)
    recent = await finished(store, DeliveryState.DELIVERED)

    removed = await prune_finished(database, older_than=clock() - 50, batch=2)

    kept = {e.id for e, _ in await history.list_events()}
    assert removed == len(old_finished) + 1
    assert kept == {old_dead.event.id, old_pending.event.id, recent.event.id}
    assert old_ignored.event.id not in kept
    # Their deliveries and attempts went with them.
    assert await rows(database, deliveries) == 3
    orphans = (
        select(func.count())
        .select_from(attempts)
        .where(attempts.c.delivery_id.not_in(select(deliveries.c.id)))
    )
    assert await database.run(lambda conn: conn.scalar(orphans)) == 0


def _pages(conn: Connection) -> int:
    return int(conn.exec_driver_sql("PRAGMA page_count").scalar() or 0)


async def test_a_new_sqlite_file_shrinks_once_its_events_are_pruned(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    async with opened(f"sqlite:///{path}") as database:
        store = Store(database)
        for i in range(300):
            await record(store, f"big-{i}", routes=(), payload={"blob": "x" * 20_000, "i": i})
        full = await database.run(_pages)
        removed = await prune_finished(database, older_than=4_000_000_000.0)
        reclaimed = await reclaim_space(database)
        shrunk = await database.run(_pages)
        left = await rows(database, events)
    with sqlite3.connect(path) as closed:
        page_size = closed.execute("PRAGMA page_size").fetchone()[0]

    assert (removed, reclaimed, left) == (300, True, 0)
    assert shrunk < full / 10
    # Closed (its WAL checkpointed), the file is as small as its pages.
    assert path.stat().st_size <= shrunk * page_size


async def test_a_sqlite_file_made_before_incremental_vacuum_is_left_as_it_is(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:  # an older release's file: no auto_vacuum
        old.execute("CREATE TABLE made_before (x)")
    async with opened(f"sqlite:///{path}") as database:
        reclaimed = await reclaim_space(database)
        mode = await database.run(lambda conn: conn.exec_driver_sql("PRAGMA auto_vacuum").scalar())

    assert (reclaimed, mode) == (False, 0)


async def test_the_wal_is_copied_into_the_file_by_its_own_thread_never_by_a_commit(
    tmp_path: Path,
) -> None:
    """The writer's connection never checkpoints (so no webhook's commit pays for one);
    the checkpoint thread copies what was committed into the database file."""
    path = tmp_path / "bridge.db"
    async with opened(f"sqlite:///{path}") as database:
        writer_threshold = await database.run(
            lambda conn: conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        )
        before = path.stat().st_size
        store = Store(database)
        for i in range(50):
            await record(store, f"wal-{i}", payload={"blob": "x" * 20_000})
        await eventually(
            lambda: path.stat().st_size > before + 50 * 20_000,
            within=30,
            what="the events copied from the WAL into the database file",
        )

    assert writer_threshold == 0

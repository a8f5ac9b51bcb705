"""Keeping the store's size bounded: finished events past retention deleted in small
batches (the writer is free between two, so webhooks go on being stored), and on SQLite
the pages they freed given back to the file system (incremental vacuum).

A SQLite file made by this release has ``auto_vacuum = INCREMENTAL``; a file made before
has not, and keeps its freed pages for reuse until a one-off ``VACUUM`` (README, "A
large store"). Measurements: bench/README.md, figure 10.
"""

from __future__ import annotations

from sqlalchemy import delete, select, text
from sqlalchemy.engine import Connection

from app.storage.database import Database
from app.storage.records import EventState
from app.storage.schema import events

PRUNE_BATCH = 1_000  # events per transaction (each with its deliveries and attempts)
VACUUM_STEP = 500  # pages given back per transaction
FINISHED = (EventState.DELIVERED.value, EventState.IGNORED.value)  # dead letters stay


async def prune_finished(database: Database, older_than: float, batch: int = PRUNE_BATCH) -> int:
    """Delete the finished events received before ``older_than``, ``batch`` at a time
    (their deliveries and attempts go with them); how many were deleted. Chosen on the
    state index, oldest first."""
    chosen = (
        select(events.c.id)
        .where(events.c.state.in_(FINISHED), events.c.received_at < older_than)
        .limit(batch)
        .scalar_subquery()
    )
    removal = delete(events).where(events.c.id.in_(chosen))
    removed = 0
    while True:
        count = await database.run(lambda conn: int(conn.execute(removal).rowcount))
        removed += count
        if count < batch:
            return removed


def _vacuum_step(conn: Connection) -> int:
    """Give back up to VACUUM_STEP free pages; the free pages left."""
    driver = conn.connection.driver_connection
    assert driver is not None
    # Each step of the statement frees one page: run it to its end.
    driver.execute(f"PRAGMA incremental_vacuum({VACUUM_STEP})").fetchall()
    return int(driver.execute("PRAGMA freelist_count").fetchone()[0])


async def reclaim_space(database: Database) -> bool:
    """On a SQLite file with incremental vacuum, give its free pages back to the file
    system, a step per transaction; False when the file has none (PostgreSQL: its own
    autovacuum reuses the space)."""
    if database.postgres:
        return False
    mode = await database.run(lambda conn: conn.execute(text("PRAGMA auto_vacuum")).scalar())
    if mode != 2:  # 2: INCREMENTAL
        return False
    while await database.run(_vacuum_step) > 0:
        pass
    return True

"""SQLite's write-ahead log: switching a file to it, and checkpointing it off the request
path (:class:`Checkpointer`)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from typing import Any


def enable_wal(cursor: Any, lock_timeout: float) -> None:
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


class Checkpointer:
    """SQLite's WAL copied back into the database file by a thread of its own, on a
    connection of its own, instead of by whichever commit crossed SQLite's threshold:
    a checkpoint writes (and on power durability syncs) pages all over the file, which
    on a large store would otherwise delay the webhook whose commit triggered it. A
    passive checkpoint never waits for the writer or the readers."""

    EVERY = 1.0  # seconds between two checkpoints

    def __init__(self, path: str) -> None:
        # Connected here, so a file it cannot open fails the store's opening: with the
        # writer's own checkpoints off, a silent thread would let the WAL grow unbounded.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bridge-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        db = self._db
        try:
            while not self._stop.wait(self.EVERY):
                with contextlib.suppress(sqlite3.Error):  # busy now: the next one will do
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            db.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

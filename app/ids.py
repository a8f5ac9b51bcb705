"""Ids of 32 hex digits, as ``uuid.uuid4().hex`` spells them: the time in milliseconds
(12 digits), then 80 random bits from a pool the kernel fills for 256 ids at a time.

The time first makes each new row's id the largest yet, so inserts append at the end of
every index on an id (the events' and deliveries' keys, the deliveries by event, the
attempts by delivery) and pruning the oldest events deletes whole pages, instead of
touching a page all over each index per row: on a store of a million events that is
the difference bench/README.md (figure 10) shows.

``uuid4()`` asks the kernel for 16 bytes per id, and each such call releases the GIL:
with the SQLite writer thread busy, the event loop then waited for the GIL to come back,
once per id, three ids per webhook (bench/README.md). The ids are as unpredictable as
before (``os.urandom``); the pool is refilled in a child after a fork, never shared."""

from __future__ import annotations

import os
import threading
import time

_BATCH = 256  # ids per refill: 4 KiB from the kernel


class _Pool:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # the loop and the writer thread may both draw
        self._hex = ""
        self._at = 0

    def draw(self) -> str:
        with self._lock:
            if self._at >= len(self._hex):
                self._hex, self._at = os.urandom(16 * _BATCH).hex(), 0
            at = self._at
            self._at += 32
        return self._hex[at : at + 32]

    def empty(self) -> None:
        """In a child after a fork: nothing drawn is shared, and a lock the parent's other
        thread held at the fork is not inherited held."""
        self._lock = threading.Lock()
        self._hex, self._at = "", 0


_pool = _Pool()
os.register_at_fork(after_in_child=_pool.empty)


def new_id(at: float | None = None) -> str:
    """An id for a row made at ``at`` (epoch seconds; default now): 12 hex digits of
    milliseconds, then 20 random ones (``os.urandom``), lower case."""
    millis = int((time.time() if at is None else at) * 1000) & 0xFFFF_FFFF_FFFF
    return f"{millis:012x}{_pool.draw()[:20]}"

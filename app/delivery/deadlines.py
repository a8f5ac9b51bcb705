"""The sets' deadlines, a durable timer: every poll, each open window whose deadline has
passed is closed late (:class:`app.storage.set_windows.SetWindows`), and each daily set
gets its window of the day opened, so its deadline passes even when nothing loads.

The timer is the windows' ``deadline_at`` in the store, so it survives restarts and
kill -9. Closing a window is one transaction under the set's lock, not a request to
Prefect: what a lease buys the deliveries (one sender at a time) the lock buys here, and
with several replicas on PostgreSQL the first to take it closes the window, the others
find it closed. The run and events it makes are deliveries, which the dispatcher makes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Protocol

import structlog

from app.errors import StoreUnavailable
from app.routing.router import Router
from app.storage.set_windows import SetWindows
from app.storage.sets import Closed

log = structlog.get_logger("erathos_prefect_bridge.delivery.deadlines")
PRUNE_EVERY_SECONDS = 3600.0


class SetObserver(Protocol):
    """What counts closed windows (app.metrics.Metrics)."""

    def set_closed(self, closed: Closed) -> None: ...


def announce(closed: Closed, observer: SetObserver | None) -> None:
    """One line per closed window, a warning when it was late; and its count."""
    outcome = window_outcome(closed)
    log.log(
        logging.WARNING if closed.late else logging.INFO,
        "set window late" if closed.late else "set window complete",
        set=closed.set_name,
        window=closed.window,
        outcome=outcome,
        missing=closed.missing,
        loads=[load.get("execution_id") for load in closed.loads],
        event_id=closed.event_id,
    )
    if observer is not None:
        with suppress(Exception):
            observer.set_closed(closed)


def window_outcome(closed: Closed) -> str:
    """``completed``, ``late_run`` (run with what arrived) or ``late_skipped``."""
    if not closed.late:
        return "completed"
    return "late_run" if closed.run else "late_skipped"


class Deadlines:
    """The timer's loop: started and stopped by the service beside the dispatcher."""

    def __init__(
        self,
        windows: SetWindows,
        router: Router,
        poll_interval: float,
        observer: SetObserver | None,
        wake: Callable[[], None],
        retention: float = 30 * 86400.0,
    ) -> None:
        self.windows = windows
        self.plans = router.set_plans
        self.poll_interval = poll_interval
        self.observer = observer
        self.wake = wake
        self.retention = retention  # BRIDGE_RETENTION: closed windows kept as long as events
        self._last_prune = 0.0
        self.checked_at: float | None = None  # the clock's time at the last check's start
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def tick(self) -> list[Closed]:
        """Close what is due, open the day's windows; the dispatcher is woken for what
        the closing made."""
        started = self.windows.clock()
        closed = await self.windows.fire_due(self.plans)
        for window in closed:
            announce(window, self.observer)
        if closed:
            self.wake()
        await self.windows.open_daily(list(self.plans.values()))
        if started - self._last_prune >= PRUNE_EVERY_SECONDS:
            self._last_prune = started
            await self.windows.prune(started - self.retention)
        self.checked_at = started
        return closed

    async def start(self) -> None:
        if self.plans:
            self._task = asyncio.create_task(self._run(), name="deadlines")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except StoreUnavailable as exc:
                log.error("store unavailable; deadlines checked at the next poll", error=str(exc))
            except Exception:
                log.exception("deadlines check failed; it goes on at the next poll")
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.poll_interval)

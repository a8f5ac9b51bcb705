"""A set's windows (``"window"`` in a set of the routes file): where the next window of a
set starts, what it is called and when its deadline is, as pure functions of the clock
and of the set's latest window. :mod:`app.storage.sets` applies them in the transaction
that stores a load; docs/routes.md ("Sets") says what happens at the edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from zoneinfo import ZoneInfo

from app.storage.sets import Placed

# A window's id is its start: two windows of one set never share it, even when the clock
# has not moved between them (a hand-moved clock, or two loads in the same instant).
MIN_STEP = 0.001


@dataclass(frozen=True)
class Within:
    """``{"within": "2h"}``: opens when a first member loads, its deadline that long after.
    Its id is its opening time, in UTC (``2026-12-07T04:05:06.789Z``)."""

    seconds: float

    @property
    def daily(self) -> bool:
        return False

    def describe(self) -> str:
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if self.seconds >= size and self.seconds % size == 0:
                return f"within {self.seconds / size:g}{unit} of the first member's load"
        return f"within {self.seconds:g}s of the first member's load"

    def next_window(self, now: float, after: Placed | None) -> Placed:
        opened = now if after is None else max(now, after.starts_at + MIN_STEP)
        return Placed(_utc_text(opened), opened, opened + self.seconds)


@dataclass(frozen=True)
class Daily:
    """``{"every": "day", "deadline": "07:00", "timezone": "America/Sao_Paulo"}``: the
    window of day D holds the loads from D-1's deadline to D's; its id is D
    (``2026-12-07``). A load after D's window closed (complete, or late) is in D+1's."""

    deadline: clock_time
    timezone: str

    @property
    def daily(self) -> bool:
        return True

    def describe(self) -> str:
        return f"every day, deadline {self.deadline:%H:%M} {self.timezone}"

    def deadline_of(self, day: date) -> float:
        zone = ZoneInfo(self.timezone)
        return datetime.combine(day, self.deadline, tzinfo=zone).timestamp()

    def day_of(self, now: float) -> date:
        """The day whose window ``now`` falls in: the first whose deadline is after it."""
        local = datetime.fromtimestamp(now, ZoneInfo(self.timezone)).date()
        for day in (local - timedelta(days=1), local, local + timedelta(days=1)):
            if now < self.deadline_of(day):
                return day
        return local + timedelta(days=2)  # unreachable: a local day's deadline is within it

    def next_window(self, now: float, after: Placed | None) -> Placed:
        day = self.day_of(now)
        if after is not None and (latest := _day_key(after.key)) is not None and latest >= day:
            day = latest + timedelta(days=1)
        return Placed(
            day.isoformat(), self.deadline_of(day - timedelta(days=1)), self.deadline_of(day)
        )


Window = Within | Daily


def _day_key(key: str) -> date | None:
    """The day a daily window's key names; None for a window of the other kind (a set
    whose window changed from "within" to daily: that window claims no day)."""
    try:
        return date.fromisoformat(key)
    except ValueError:
        return None


def _utc_text(epoch: float) -> str:
    text = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")

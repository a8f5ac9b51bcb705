"""What the console's pages show, worked out from the stored records: times, the events
per hour chart, the events page's filters, where a delivery goes, and text with every
secret masked. Plain functions and records, so the templates only lay them out."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from app.routing.router import Router
from app.storage.history import parse_cursor
from app.storage.records import (
    DROP_IN_ROUTE,
    PREFECT_EVENT_ROUTE,
    DeliveryRecord,
    EventState,
    RunState,
)

HOUR = 3600.0
# Bottom to top in each bar, and the order counts are listed in.
STATES = (EventState.DELIVERED, EventState.IGNORED, EventState.PENDING, EventState.DEAD)
COUNT_ORDER = (EventState.DELIVERED, EventState.PENDING, EventState.DEAD, EventState.IGNORED)
CHART_HEIGHT = 120.0
BAR_WIDTH = 24.0
BAR_GAP = 4.0
LABEL_EVERY = 6  # hours between two x-axis labels


def iso(epoch: float) -> str:
    """Epoch seconds as ISO 8601 UTC, for ``<time datetime>`` (console.js shows it in
    the browser's zone beside)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def utc_text(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- the events per hour chart -------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    state: EventState
    count: int
    y: float
    height: float


@dataclass(frozen=True)
class Bar:
    x: float
    start: float  # epoch second the hour begins
    total: int
    segments: list[Segment]
    label: str | None  # the hour, under every LABEL_EVERY-th bar

    @property
    def title(self) -> str:
        counts = ", ".join(f"{s.count} {s.state}" for s in self.segments) or "no events"
        return f"{utc_text(self.start)[11:16]} UTC, one hour: {counts}"


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    peak: int
    width: float
    height: float = CHART_HEIGHT


def hourly_chart(
    outcomes: Iterable[tuple[float, EventState, int]], since: float, now: float
) -> Chart:
    """One stacked bar per clock hour (UTC) from the hour ``since`` falls in to the
    current one, each split by the state the hour's events are in now. ``outcomes`` are
    :meth:`app.storage.history.History.outcomes_by_hour`'s: (a time in the hour, state, count)."""
    first = math.floor(since / HOUR) * HOUR
    hours = int((math.floor(now / HOUR) * HOUR - first) // HOUR) + 1
    per_hour: list[Counter[EventState]] = [Counter() for _ in range(hours)]
    for hour, state, count in outcomes:
        index = int((hour - first) // HOUR)
        if 0 <= index < hours:
            per_hour[index][state] += count
    peak = max((sum(c.values()) for c in per_hour), default=0)
    scale = CHART_HEIGHT / peak if peak else 0.0
    bars = []
    for index, counts in enumerate(per_hour):
        start = first + index * HOUR
        y = CHART_HEIGHT
        segments = []
        for state in STATES:
            if counts[state]:
                height = counts[state] * scale
                y -= height
                segments.append(Segment(state, counts[state], round(y, 2), round(height, 2)))
        label = utc_text(start)[11:16] if index % LABEL_EVERY == 0 else None
        x = index * (BAR_WIDTH + BAR_GAP)
        bars.append(Bar(x, start, sum(counts.values()), segments, label))
    return Chart(bars, peak, width=hours * (BAR_WIDTH + BAR_GAP))


def state_counts(outcomes: Iterable[tuple[float, EventState, int]]) -> dict[EventState, int]:
    """The events in each state, over every hour of ``outcomes`` (as hourly_chart takes)."""
    counted: Counter[EventState] = Counter()
    for _, state, count in outcomes:
        counted[state] += count
    return {state: counted[state] for state in COUNT_ORDER}


# -- the events page's filters ---------------------------------------------------------------


@dataclass
class EventFilter:
    """The events page's query: what the admin API's ``GET /events`` takes, from a form."""

    state: EventState | None = None
    run: RunState | None = None  # events with a flow run in this state
    table: str | None = None
    job: str | None = None
    text: str | None = None  # part of the execution id
    since: float | None = None
    until: float | None = None
    before: tuple[float, str] | None = None
    form: dict[str, str] = field(default_factory=dict)  # as typed, to refill the form
    errors: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, params: Mapping[str, str]) -> EventFilter:
        """The filter a query string asks for; what cannot be read is named in ``errors``
        (and left out), never an exception."""
        form = {name: params.get(name, "").strip()[:200] for name in FILTER_FIELDS}
        found = cls(form=form)
        if form["state"]:
            try:
                found.state = EventState(form["state"])
            except ValueError:
                found.errors.append(f"state: one of {', '.join(EventState)}")
        if form["run"]:
            try:
                found.run = RunState(form["run"])
            except ValueError:
                found.errors.append(f"run: one of {', '.join(RunState)}")
        found.table = form["table"] or None
        found.job = form["job"] or None
        found.text = form["q"] or None
        found.since = _utc_input(form["since"], "since", found.errors)
        found.until = _utc_input(form["until"], "until", found.errors)
        cursor = params.get("cursor", "")
        if cursor:
            try:
                found.before = parse_cursor(cursor[:100])
            except ValueError:
                found.errors.append("cursor: not one this page made")
        return found

    def query(self, **extra: str) -> str:
        """This filter as a query string (for the next page's link)."""
        return urlencode({k: v for k, v in {**self.form, **extra}.items() if v})


FILTER_FIELDS = ("state", "run", "table", "job", "q", "since", "until")


def _utc_input(text: str, name: str, errors: list[str]) -> float | None:
    """A ``datetime-local`` value (or any ISO 8601 time), read as UTC when it has no offset."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError):
        errors.append(f"{name}: a time such as 2026-11-30T06:00 (UTC)")
        return None


# -- deliveries -------------------------------------------------------------------------------


def target_of(router: Router, delivery: DeliveryRecord) -> str:
    """Where a delivery goes, as the routes describe it now."""
    route = router.route(delivery.route)
    if route is not None:
        return f"{route.target.label} on connection {route.connection}"
    if delivery.route == DROP_IN_ROUTE:
        return f"as the Prefect-shaped request asked, on connection {delivery.connection}"
    if delivery.route.startswith(PREFECT_EVENT_ROUTE):
        return f"a Prefect event on connection {delivery.connection}"
    return f"connection {delivery.connection} (the route is no longer configured)"


def payload_fields(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The event's fields as sent: strings as they are, anything else as JSON."""
    return [
        (name, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        for name, value in payload.items()
    ]

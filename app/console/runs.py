"""What the console shows of flow runs followed to their end: a delivery's outcome as an
operator reads it (an emission Prefect took is an "event sent", never "delivered"), the
day's runs by final state, and each route's freshness (p50 and p95) from the histogram
:class:`app.storage.runs.Runs` keeps. Plain functions, so the templates only lay them out."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app.routing.prefect_event import is_emission
from app.storage.records import (
    FINAL_RUN_STATES,
    DeliveryRecord,
    DeliveryState,
    EventState,
    RunState,
)
from app.storage.runs import FRESHNESS_BUCKETS, FROM_FINISH, FROM_RECEIPT, percentile

EVENT_SENT = "event sent"
# The run states the events page filters on, the telling ones first.
RUN_FILTER_STATES = tuple(RunState)


def outcome_of(d: DeliveryRecord) -> str:
    """A delivery's badge: its state, but "event sent" for an emission Prefect took."""
    if d.state is DeliveryState.DELIVERED and is_emission(d.route):
        return EVENT_SENT
    return d.state.value


def event_outcome(state: EventState, found: Sequence[DeliveryRecord]) -> str:
    """An event's badge: its state, but "event sent" when it only became Prefect events
    and Prefect took them."""
    if state is EventState.DELIVERED and all(is_emission(d.route) for d in found):
        return EVENT_SENT
    return state.value


def is_event(d: DeliveryRecord) -> bool:
    """An emission: it never has a flow run (the event page says so, not "none yet")."""
    return is_emission(d.route)


def final_counts(counted: Mapping[RunState, int]) -> dict[RunState, int]:
    """The day's runs in each final state, every one listed (0 included), in order."""
    return {state: counted.get(state, 0) for state in FINAL_RUN_STATES}


@dataclass(frozen=True)
class RouteFreshness:
    """One route's freshness over the day: seconds from the table landing (Erathos's
    finish time; the webhook's receipt) to its run's end, p50 and p95, and the runs."""

    route: str
    runs: int
    finish_p50: float | None
    finish_p95: float | None
    receipt_p50: float | None
    receipt_p95: float | None


def freshness_rows(histograms: Mapping[tuple[str, str], list[int]]) -> list[RouteFreshness]:
    """Per route, by name: :meth:`app.storage.runs.Runs.freshness`'s histograms summed up."""
    rows = []
    for route in sorted({route for route, _ in histograms}):
        finish = histograms.get((route, FROM_FINISH), [])
        receipt = histograms.get((route, FROM_RECEIPT), [])
        rows.append(
            RouteFreshness(
                route,
                sum(receipt),
                percentile(finish, 0.5),
                percentile(finish, 0.95),
                percentile(receipt, 0.5),
                percentile(receipt, 0.95),
            )
        )
    return rows


def duration_text(seconds: float | None) -> str:
    """A freshness as an operator reads it: ``45 s``, ``12.5 min``, ``3.2 h``; ``-``: none;
    past the histogram's last bound, ``over 6.0 h``."""
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return f"over {duration_text(FRESHNESS_BUCKETS[-1])}"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"

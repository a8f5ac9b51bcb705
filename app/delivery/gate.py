"""Admission to one Prefect connection: a concurrency window that finds Prefect's own
best rate, an optional rate cap and a circuit breaker, so a struggling Prefect is
neither stormed nor hammered.

The window is a hill-climber on the rate Prefect creates flow runs at, measured, not
guessed: how many requests in flight make a server fastest depends on what it runs on
(a Prefect on SQLite is fastest one request at a time and answers a second concurrent
write with a 503; one on PostgreSQL is fastest at two to four; Prefect Cloud takes
many), and latency alone cannot tell those apart (a second request in flight that
doubles the latency of each gains nothing; one that adds 75 % gains 14 %).

    hold   the window stays where it is for a measurement: ``EPOCH_COMPLETIONS`` flow
           runs created back to back (the window full, requests waiting for it), their
           rate by the clock and their mean latency; ``CLIMB_COMPLETIONS`` while it
           first climbs from one, until a higher level first loses
    probe  then one measurement one request higher (or lower) is compared with it: the
           higher window is held unless it is slower by ``TOLERANCE / lower`` (a share
           that shrinks as the window grows, as what one request more can change does);
           the level that lost is probed again only after twice as many measurements
           as the last time (up to ``HOLD_CAP_EPOCHS``), so a settled window stays
           settled and a SQLite server sees a trial second request ever more rarely
    back off  a 503, a 429 or a timeout halves the window at once, and counts as two lost
           probes of the level it came at; latency that doubles at a held window (a
           Prefect that got slower, busier with others) takes one request away

Only flow runs Prefect created count: a refused connection or a 4xx never reached the
part of Prefect whose pace is measured. A measurement during which turns stood free
with no delivery waiting (``IDLE_SHARE`` of the window's time) is dropped: it measured
the backlog, not Prefect, and a window never full is never grown.

    closed     requests flow (at most the window at once, ``max_rate`` per s)
    open       the connection is known down (consecutive failures) or asked us to
               wait (Retry-After): no delivery is tried; its health endpoint is probed
               on a short, growing, capped interval
    half-open  the probe succeeded (or Retry-After ran out): one trial delivery goes;
               success closes the circuit, failure opens it again
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum

import structlog

from app.delivery.client import AttemptResult, Outcome, PrefectConnection

log = structlog.get_logger("erathos_prefect_bridge.delivery.gate")

# Flow runs per measurement of a window (at least four per request in flight): enough
# that one slow answer moves a rate by a few per cent, few enough that a backlog of a
# few hundred is measured several times over while it drains.
EPOCH_COMPLETIONS = 30
# Until a higher level first loses, measurements are this short: the window climbs from
# one to a Prefect on PostgreSQL's four in about 70 flow runs, where a wrong step up costs
# at most a short measurement (and on SQLite its 503 ends the climb at once).
CLIMB_COMPLETIONS = 15
# One more request in flight is held unless it makes Prefect slower by more than this
# share (divided by the lower window: 10 % from one to two, 5 % from two to three). A
# close call goes to the higher level: a measurement on a busy machine is noisy, a Prefect
# on SQLite shows its limit with 503s as well, and more in flight hides its own delays.
TOLERANCE = 0.1
# A level that lost a probe is tried again after 2, 4, 8, ... measurements, at most this
# many (about half a minute at 60 flow runs a second).
HOLD_CAP_EPOCHS = 64
# A 503, 429 or timeout at a level counts as this many lost probes of it: a Prefect on
# SQLite sees a second request again after 4, then 16, then 64 measurements.
OVERLOAD_LOSSES = 2
# A measurement during which turns stood free with no delivery waiting for this share of
# the window's time measured the backlog, not Prefect: it is dropped.
IDLE_SHARE = 0.1
# A held window whose mean latency reaches this many times what it was when the window
# was taken gives one request back: Prefect got slower, most likely busier with others.
LATENCY_INFLATION = 2.0
FAILURES_TO_OPEN = 3
# Deliveries claimed at once beyond a window in flight and one waiting, when the waiting
# ones run low: a backlog drains with one claim (one transaction) per batch.
CLAIM_AHEAD = 8
PROBE_FIRST = 0.5
PROBE_CAP = 5.0
# A probe's own deadline: a connection that accepts and never answers counts as down
# this soon, whatever BRIDGE_PREFECT_TIMEOUT allows a delivery.
PROBE_TIMEOUT = 5.0


class Circuit(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class GateClosed(Exception):
    """The circuit opened while a delivery waited for its turn: it was not tried."""


@dataclass
class _Measurement:
    """Flow runs created at one window since its measurement started."""

    settling: int  # answers still to pass over: requests sent under the previous window
    started: float | None = None  # when the answer the rate is counted from came
    created: int = 0
    latency: float = 0.0  # their durations added up, seconds
    idle: float = 0.0  # seconds turns stood free with no delivery waiting, added up


class ConcurrencyWindow:
    """How many requests may be in flight to one connection: the level held, or for one
    measurement a level next to it being tried (see the module docstring)."""

    def __init__(self, maximum: int, name: str = "") -> None:
        self.maximum = maximum
        self.name = name  # the connection's, for the log
        self.limit = 1  # the level in flight now: the held one, or the one being probed
        self.held = 1
        self._held_rate: float | None = None  # flow runs per second, its last measurement
        self._held_latency: float | None = None  # mean seconds, when the level was taken
        self._measured = 0  # measurements so far: the clock that probes come due by
        self._climbing = True  # until a higher level first loses: measurements are short
        self._lost: dict[int, int] = {}  # level -> probes it lost in a row
        self._due: dict[int, int] = {}  # level -> the measurement it may be tried after
        self._now = _Measurement(settling=0)

    def created(self, latency: float, now: float) -> None:
        """A flow run was created ``latency`` seconds after its request was sent; ``now``
        is a monotonic clock's reading."""
        measurement = self._now
        if measurement.started is None:
            if measurement.settling > 0:
                measurement.settling -= 1
            if measurement.settling == 0:
                measurement.started = now
            return
        measurement.created += 1
        measurement.latency += latency
        epoch = CLIMB_COMPLETIONS if self._climbing else EPOCH_COMPLETIONS
        if measurement.created >= max(epoch, 4 * self.limit):
            elapsed = now - measurement.started
            mean_latency = measurement.latency / measurement.created
            self._now = _Measurement(settling=0, started=now)
            if elapsed > 0 and measurement.idle <= IDLE_SHARE * self.limit * elapsed:
                self._measure(measurement.created / elapsed, mean_latency)

    def idle(self, seconds: float) -> None:
        """A turn stood free this long with no delivery waiting for it."""
        self._now.idle += seconds

    def overloaded(self) -> None:
        """A 503, a 429 or a timeout: Prefect is saturated at this level; halve now. It
        counts as two lost probes: certain, where a slower measurement may be noise."""
        self._lose(self.limit, probes=OVERLOAD_LOSSES)
        self._climbing = False
        self._take(max(1, self.limit // 2), latency=None, why="overloaded")

    def interrupted(self) -> None:
        """What is being measured is not Prefect's pace (a request failed before Prefect
        answered, or with a 5xx): measure again from the next answer."""
        self._now = _Measurement(settling=0)

    def _measure(self, rate: float, latency: float) -> None:
        self._measured += 1
        if self.limit == self.held:
            self._held_measured(rate, latency)
        else:
            self._probe_measured(rate, latency)

    def _held_measured(self, rate: float, latency: float) -> None:
        if self._held_latency is None:
            self._held_latency = latency
        elif self.held > 1 and latency > LATENCY_INFLATION * self._held_latency:
            self._lose(self.held)
            self._climbing = False
            self._take(self.held - 1, latency=None, why="slower")
            return
        self._held_rate = rate
        probe = self._probe_due()
        if probe is not None:
            self._set(probe)

    def _probe_measured(self, rate: float, latency: float) -> None:
        # A probe starts only after the held level was measured: its rate is known.
        held_rate = self._held_rate if self._held_rate is not None else rate
        low, high = sorted(((self.held, held_rate), (self.limit, rate)))
        higher_wins = high[1] >= low[1] * (1 - TOLERANCE / low[0])
        winner, loser = (high[0], low[0]) if higher_wins else (low[0], high[0])
        log.info(
            "concurrency window probed",
            connection=self.name,
            held=self.held,
            held_rate=round(held_rate, 1),
            probe=self.limit,
            rate=round(rate, 1),
            winner=winner,
        )
        self._lose(loser)
        self._climbing &= winner > loser  # a level higher lost: the climb is over
        self._lost.pop(winner, None)
        if winner == self.held:
            self._set(self.held)
        else:  # its measurement is the new level's first: the next probe may go at once
            self._take(winner, latency=latency)
            self._held_measured(rate, latency)

    def _probe_due(self) -> int | None:
        """The level next to the held one to try now, if one is due: higher first."""
        for level in (self.held + 1, self.held - 1):
            if 1 <= level <= self.maximum and self._due.get(level, 0) <= self._measured:
                return level
        return None

    def _lose(self, level: int, probes: int = 1) -> None:
        lost = self._lost[level] = self._lost.get(level, 0) + probes
        self._due[level] = self._measured + min(HOLD_CAP_EPOCHS, 2**lost)

    def _take(self, level: int, latency: float | None, why: str | None = None) -> None:
        if why is not None and level != self.held:
            log.info(
                "concurrency window", connection=self.name, window=level, was=self.held, why=why
            )
        self.held = level
        self._held_rate = None
        self._held_latency = latency
        self._set(level)

    def _set(self, level: int) -> None:
        # The requests still in flight were sent under the previous level: their answers
        # belong to neither measurement.
        settling = max(self.limit, level)
        self.limit = level
        self._now = _Measurement(settling=settling)


class ConnectionGate:
    def __init__(
        self,
        max_concurrency: int,
        max_rate: float | None = None,
        name: str = "",
        retry_cap: float = 3600.0,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.retry_cap = retry_cap  # seconds: BRIDGE_RETRY_CAP
        self.concurrency = ConcurrencyWindow(max_concurrency, name)
        self.in_flight = 0
        self._waiting = 0  # deliveries waiting in slot() for a turn
        # When each turn that stands free with nobody waiting for it was freed.
        self._free_since: deque[float] = deque(maxlen=max_concurrency)
        self._turn = asyncio.Condition()
        self._spacing = asyncio.Lock()
        self._interval = 1.0 / max_rate if max_rate else 0.0
        self._next_start = 0.0
        self.load = 0  # deliveries assigned to this connection: waiting or in flight
        self.circuit = Circuit.CLOSED
        self._failures = 0
        self._open_until: float | None = None  # Retry-After: half-open at this time
        self._next_probe = 0.0
        self._probe_interval = PROBE_FIRST
        self._trial_running = False
        self.recovered = False  # set when the circuit closes again; the dispatcher clears it

    @property
    def admits(self) -> bool:
        """Whether a new delivery may be started now."""
        self._tick()
        if self.circuit is Circuit.CLOSED:
            return True
        return self.circuit is Circuit.HALF_OPEN and not self._trial_running

    @property
    def free(self) -> int:
        """How many more deliveries the dispatcher may claim for this connection."""
        if not self.admits:
            return 0
        if self.circuit is Circuit.HALF_OPEN:
            return 1 if self.load == 0 else 0
        # One window in flight and one more claimed and waiting, so the next request
        # starts the moment one finishes instead of after another claim.
        return max(0, 2 * self.limit - self.load)

    @property
    def claimable(self) -> int:
        """How many due deliveries the dispatcher's claim loop may take now: :attr:`free`,
        but in batches of up to ``CLAIM_AHEAD`` more, taken once the waiting ones ran down
        to one window, so that a backlog drains with one claim (one transaction) per
        batch instead of one per flow run. (A new event is born claimed only when
        :attr:`free` has room: its webhook waits for its turn, a queued one does not.)"""
        if self.circuit is not Circuit.CLOSED or self.load > 2 * self.limit:
            return self.free
        return 2 * self.limit + CLAIM_AHEAD - self.load

    @property
    def limit(self) -> int:
        """How many requests may be in flight now."""
        return self.concurrency.limit

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for a turn; raises :class:`GateClosed` if the circuit is not admitting then."""
        async with self._turn:
            self._waiting += 1
            try:
                await self._turn.wait_for(lambda: self.in_flight < self.limit)
            finally:
                self._waiting -= 1
            self.in_flight += 1
            if self._free_since:
                self.concurrency.idle(time.monotonic() - self._free_since.popleft())
        trial = False
        try:
            if not self.admits:
                raise GateClosed()
            trial = self.circuit is Circuit.HALF_OPEN
            self._trial_running |= trial
            if self._interval:
                # Rate cap: one start at a time, each at least the interval after the
                # previous one really started (a late wake-up never bunches starts).
                async with self._spacing:
                    if (wait := self._next_start - time.monotonic()) > 0:
                        await asyncio.sleep(wait)
                    self._next_start = time.monotonic() + self._interval
            yield
        finally:
            if trial:
                self._trial_running = False
            async with self._turn:
                self.in_flight -= 1
                if not self._waiting and self.in_flight < self.limit:
                    self._free_since.append(time.monotonic())
                self._turn.notify_all()

    def observe(self, result: AttemptResult, *, paced: bool = True) -> None:
        """Learn from one answer: only transient failures count against the connection,
        and only a flow run's creation (``paced``; not an event's) feeds the window's
        measure of Prefect's pace."""
        if result.status_code in (429, 503) or (result.status_code is None and result.timed_out):
            self.concurrency.overloaded()
        elif result.outcome is Outcome.DELIVERED and paced:
            self.concurrency.created(result.duration_ms / 1000, time.monotonic())
        elif result.outcome is Outcome.TRANSIENT:
            self.concurrency.interrupted()  # no answer, or a 5xx: not Prefect's pace
        if result.outcome is not Outcome.TRANSIENT:
            if self.circuit is not Circuit.CLOSED:
                self.recovered = True
            self.circuit = Circuit.CLOSED
            self._failures = 0
            self._probe_interval = PROBE_FIRST
            return
        self._failures += 1
        if result.retry_after is not None:  # obeyed up to BRIDGE_RETRY_CAP
            self._open(until=time.monotonic() + min(result.retry_after, self.retry_cap))
        elif self.circuit is Circuit.HALF_OPEN or self._failures >= FAILURES_TO_OPEN:
            self._open(until=None)

    def needs_probe(self) -> bool:
        self._tick()
        return (
            self.circuit is Circuit.OPEN
            and self._open_until is None
            and time.monotonic() >= self._next_probe
        )

    async def probe(self, connection: PrefectConnection) -> None:
        """Ask the connection's health endpoint whether it is back, for at most
        ``PROBE_TIMEOUT`` seconds."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                reachable = (await connection.health()).reachable
        except TimeoutError:
            reachable = False
        if self.circuit is not Circuit.OPEN or self._open_until is not None:
            return  # a delivery's answer came first (the probe runs beside them)
        if reachable:
            self.circuit = Circuit.HALF_OPEN
            return
        self._next_probe = time.monotonic() + self._probe_interval
        self._probe_interval = min(PROBE_CAP, self._probe_interval * 2)

    def _open(self, until: float | None) -> None:
        self.circuit = Circuit.OPEN
        self._open_until = until
        self._next_probe = time.monotonic() + self._probe_interval

    def _tick(self) -> None:
        if (
            self.circuit is Circuit.OPEN
            and self._open_until is not None
            and time.monotonic() >= self._open_until
        ):
            self.circuit = Circuit.HALF_OPEN
            self._open_until = None

"""Admission to one Prefect connection: an adaptive concurrency window, an optional rate
cap and a circuit breaker, so a struggling Prefect is neither stormed nor hammered.

The window starts at one request in flight, grows by one per ``GROWTH_SUCCESSES``
successes and halves on 503, 429 or a timeout (additive increase, multiplicative decrease),
never above ``BRIDGE_MAX_CONCURRENCY``: a self-hosted Prefect on SQLite answers
503 to most concurrent writes, Prefect Cloud takes many.

    closed     requests flow (at most ``max_concurrency`` at once, ``max_rate`` per s)
    open       the connection is known down (consecutive failures) or asked us to
               wait (Retry-After): no delivery is tried; its health endpoint is probed
               on a short, growing, capped interval
    half-open  the probe succeeded (or Retry-After ran out): one trial delivery goes;
               success closes the circuit, failure opens it again
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import StrEnum

from app.prefect import AttemptResult, Outcome, PrefectConnection

FAILURES_TO_OPEN = 3
# Slow growth keeps a saturated server's 503s to a few percent: after a halving the
# window probes one request higher only every this many successes.
GROWTH_SUCCESSES = 20
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


class ConnectionGate:
    def __init__(self, max_concurrency: int, max_rate: float | None = None) -> None:
        self.max_concurrency = max_concurrency
        self.window = 1.0  # how many requests may be in flight now (AIMD)
        self._successes = 0  # since the window last grew or shrank
        self.in_flight = 0
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
    def limit(self) -> int:
        return max(1, int(self.window))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for a turn; raises :class:`GateClosed` if the circuit is not admitting then."""
        async with self._turn:
            await self._turn.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1
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
                self._turn.notify_all()

    def observe(self, result: AttemptResult) -> None:
        """Learn from one answer: only transient failures count against the connection."""
        if result.status_code in (429, 503) or (result.status_code is None and result.timed_out):
            self.window = max(1.0, self.window / 2)  # Prefect is saturated: back off
            self._successes = 0
        elif result.outcome is Outcome.DELIVERED:
            # Counted, not added up in fractions: 1/20 twenty times is not exactly 1.
            self._successes += 1
            if self._successes >= GROWTH_SUCCESSES:
                self._successes = 0
                self.window = min(float(self.max_concurrency), self.window + 1)
        if result.outcome is not Outcome.TRANSIENT:
            if self.circuit is not Circuit.CLOSED:
                self.recovered = True
            self.circuit = Circuit.CLOSED
            self._failures = 0
            self._probe_interval = PROBE_FIRST
            return
        self._failures += 1
        now = time.monotonic()
        if result.retry_after is not None:
            self._open(until=now + result.retry_after)
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

"""The connection gate on a clock moved by hand: the concurrency window (fed the latency
a simulated Prefect answers with at each window) and what may be claimed, the circuit
(open, probed, half-open, closed again) and the rate cap."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

import app.delivery.gate
from app.config import PREFECT_API_VERSION
from app.delivery.client import AttemptResult, Outcome, PrefectConnection
from app.delivery.gate import (
    CLAIM_AHEAD,
    CLIMB_COMPLETIONS,
    EPOCH_COMPLETIONS,
    HOLD_CAP_EPOCHS,
    PROBE_CAP,
    PROBE_FIRST,
    Circuit,
    ConnectionGate,
    GateClosed,
)
from tests.support.stub import REFUSED_URL, mock_connection
from tests.support.waiting import ManualClock, eventually

pytestmark = pytest.mark.anyio

MAX_CONCURRENCY = 4
SUCCESS = AttemptResult(Outcome.DELIVERED, 20.0, 201, flow_run_id="run-1")
DOWN = AttemptResult(Outcome.TRANSIENT, 20.0, 503, "HTTP 503: busy")


def slow_down(retry_after: float) -> AttemptResult:
    return AttemptResult(
        Outcome.TRANSIENT, 20.0, 429, "HTTP 429: slow down", retry_after=retry_after
    )


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    fake = ManualClock()
    monkeypatch.setattr(app.delivery.gate, "time", fake)  # the gate's clock only, not asyncio's
    return fake


@pytest.fixture
def gate(clock: ManualClock) -> ConnectionGate:
    return ConnectionGate(max_concurrency=MAX_CONCURRENCY)


# Seconds Prefect takes to answer a create with this many requests in flight.
Latency = Callable[[int], float]


def flat(window: int) -> float:
    """A Prefect with room to spare (Prefect Cloud): more in flight costs nothing."""
    return 0.020


def serial(window: int) -> float:
    """A Prefect on SQLite: one create at a time, and more in flight make each wait for
    the others and then some (the rate falls by a sixth)."""
    return 0.020 if window == 1 else 0.020 * window * 1.2


def postgres(window: int) -> float:
    """A Prefect on PostgreSQL, as measured: 64, 73, 72 and 71 flow runs a second."""
    return window / {1: 64, 2: 73, 3: 72}.get(window, 71)


def serve(gate: ConnectionGate, clock: ManualClock, latency: Latency, creates: int) -> Counter[int]:
    """``creates`` flow runs created back to back with the window full, each answered
    ``latency(window)`` after it was sent (so one is answered every ``latency / window``):
    how many were created at each window."""
    windows: Counter[int] = Counter()
    for _ in range(creates):
        window = gate.limit
        seconds = latency(window)
        clock.advance(seconds / window)
        gate.observe(AttemptResult(Outcome.DELIVERED, seconds * 1000, 201, flow_run_id="run"))
        windows[window] += 1
    return windows


def grow(gate: ConnectionGate, clock: ManualClock, limit: int) -> None:
    """Deliver to a Prefect with room to spare until the window lets ``limit`` requests
    be in flight."""
    for _ in range(100):
        if gate.limit == limit:
            return
        serve(gate, clock, flat, 10)
    raise AssertionError(f"the window never grew to {limit}")


def open_gate(gate: ConnectionGate) -> None:
    for _ in range(3):
        gate.observe(DOWN)
    assert gate.circuit is Circuit.OPEN


async def enter(gate: ConnectionGate) -> None:
    async with gate.slot():
        pass


# -- the window -------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 2, MAX_CONCURRENCY])
def test_a_closed_gate_lets_one_window_in_flight_and_one_more_waiting_be_claimed(
    gate: ConnectionGate, clock: ManualClock, limit: int
) -> None:
    grow(gate, clock, limit)
    assert (gate.circuit, gate.admits, gate.limit) == (Circuit.CLOSED, True, limit)

    for load in range(2 * limit + 1):
        gate.load = load
        assert gate.free == 2 * limit - load

    gate.load = 2 * limit + 1  # the window halved under deliveries already claimed
    assert (gate.admits, gate.free) == (True, 0)


@pytest.mark.parametrize("limit", [1, 2, MAX_CONCURRENCY])
def test_the_claim_loop_takes_due_deliveries_in_batches(
    gate: ConnectionGate, clock: ManualClock, limit: int
) -> None:
    """The claim loop tops the waiting deliveries up to CLAIM_AHEAD more than a window
    waiting, and only once they ran down to one window waiting: one claim per batch, not
    per flow run. New events keep to ``free``."""
    grow(gate, clock, limit)
    for load in range(2 * limit + 1):
        gate.load = load
        assert gate.claimable == 2 * limit + CLAIM_AHEAD - load

    for load in range(2 * limit + 1, 2 * limit + CLAIM_AHEAD + 2):
        gate.load = load  # a batch is waiting (or the window halved under it)
        assert (gate.claimable, gate.free) == (0, 0)

    gate.observe(slow_down(1.0))  # the circuit opens: nothing is claimed
    gate.load = 0
    assert (gate.claimable, gate.free) == (0, 0)


@pytest.mark.parametrize("limit", [1, 2, MAX_CONCURRENCY])
async def test_no_more_than_the_window_is_in_flight_and_the_next_starts_when_one_leaves(
    gate: ConnectionGate, clock: ManualClock, limit: int
) -> None:
    grow(gate, clock, limit)
    log: list[tuple[str, int]] = []
    leave = [asyncio.Event() for _ in range(limit + 1)]

    async def deliver(number: int) -> None:
        async with gate.slot():
            log.append(("in", number))
            await leave[number].wait()
            log.append(("out", number))

    deliveries = [asyncio.create_task(deliver(n)) for n in range(limit + 1)]
    await eventually(lambda: len(log) == limit, within=5, what=f"{limit} in flight")
    for _ in range(20):  # every delivery has had its turn: the last one is still waiting
        await asyncio.sleep(0)
    assert (log, gate.in_flight) == ([("in", n) for n in range(limit)], limit)

    leave[0].set()
    await eventually(lambda: len(log) == limit + 2, within=5, what="the last one started")
    assert log[limit:] == [("out", 0), ("in", limit)]
    assert gate.in_flight == limit

    for event in leave:
        event.set()
    await asyncio.gather(*deliveries)
    assert gate.in_flight == 0


def test_a_window_as_fast_at_every_level_grows_to_the_maximum_and_stays(
    gate: ConnectionGate, clock: ManualClock
) -> None:
    serve(gate, clock, flat, 1000)
    assert gate.limit == MAX_CONCURRENCY

    later = serve(gate, clock, flat, 3000)
    # Now and then one less is tried, and loses: it is tried ever more rarely.
    assert later[MAX_CONCURRENCY] >= 0.95 * 3000, later
    assert gate.limit == MAX_CONCURRENCY


def test_the_window_climbs_in_short_measurements_until_a_higher_level_first_loses(
    gate: ConnectionGate, clock: ManualClock
) -> None:
    climbed = serve(gate, clock, flat, 4 * (CLIMB_COMPLETIONS + 2 * MAX_CONCURRENCY))
    assert gate.limit == MAX_CONCURRENCY, climbed

    gate.observe(DOWN)  # the climb is over: from now on a measurement is a long one
    held = gate.limit
    serve(gate, clock, flat, 2 * CLIMB_COMPLETIONS + held)
    assert gate.limit == held


def test_a_second_request_that_slows_prefect_down_is_given_back_and_tried_ever_more_rarely(
    gate: ConnectionGate, clock: ManualClock
) -> None:
    first = serve(gate, clock, serial, 300)
    assert gate.concurrency.held == 1
    assert 0 < first[2] < 0.35 * 300, first  # tried, and given back

    later = serve(gate, clock, serial, 20 * HOLD_CAP_EPOCHS * EPOCH_COMPLETIONS)
    assert gate.concurrency.held == 1
    # Once the tries are as rare as they get: one measurement (and its settling) in
    # every HOLD_CAP_EPOCHS at window one.
    assert later[2] <= 20 * (EPOCH_COMPLETIONS + 2) + 2 * EPOCH_COMPLETIONS, later
    assert set(later) == {1, 2}


def test_a_prefect_that_answers_a_second_request_with_503_sees_one_ever_more_rarely(
    gate: ConnectionGate, clock: ManualClock
) -> None:
    busy_at: list[int] = []  # the flow runs created before each 503
    created = 0
    while created < 10 * HOLD_CAP_EPOCHS * EPOCH_COMPLETIONS:
        if gate.limit > 1:
            gate.observe(DOWN)
            busy_at.append(created)
        else:
            serve(gate, clock, flat, 1)
            created += 1
    assert gate.limit == 1
    gaps = [later - earlier for earlier, later in itertools.pairwise(busy_at)]
    # A 503 counts as two lost probes: tried again after 4, 16, then 64 measurements.
    assert [round(gap / EPOCH_COMPLETIONS) for gap in gaps[:3]] == [4, 16, HOLD_CAP_EPOCHS], gaps
    assert len(busy_at) <= 3 + 10, busy_at


def test_a_prefect_as_fast_at_two_to_four_and_slower_at_one_is_held_above_one(
    gate: ConnectionGate, clock: ManualClock
) -> None:
    serve(gate, clock, postgres, 300)  # found within the first few measurements
    held = serve(gate, clock, postgres, 3000)
    assert held[1] <= 0.05 * 3000, held  # one less is tried now and then, and loses
    assert gate.concurrency.held > 1


def test_a_held_window_whose_latency_doubles_gives_one_back_and_grows_again_if_worth_it(
    gate: ConnectionGate, clock: ManualClock
) -> None:
    serve(gate, clock, flat, 3000)  # held at the maximum, one less tried only rarely
    assert gate.concurrency.held == MAX_CONCURRENCY

    def slower(window: int) -> float:
        return 3 * flat(window)

    created = 0  # within a few measurements (the first began before it got slower)
    while gate.concurrency.held == MAX_CONCURRENCY and created < 3 * EPOCH_COMPLETIONS:
        serve(gate, clock, slower, 1)
        created += 1
    assert gate.concurrency.held == MAX_CONCURRENCY - 1, "never gave one back"

    serve(gate, clock, slower, 1000)  # as slow, but still faster with every one more
    assert gate.concurrency.held == MAX_CONCURRENCY  # a window that only shrinks is wrong


def test_the_window_halves_on_a_busy_answer_and_never_exceeds_the_maximum(
    gate: ConnectionGate, clock: ManualClock
) -> None:
    serve(gate, clock, flat, 3000)
    assert gate.limit == MAX_CONCURRENCY

    gate.observe(slow_down(0.0))
    assert gate.limit == MAX_CONCURRENCY // 2
    gate.observe(AttemptResult(Outcome.TRANSIENT, 10_000.0, None, "timed out", timed_out=True))
    assert gate.limit == 1
    gate.observe(DOWN)
    assert gate.limit == 1  # never below one


@pytest.mark.parametrize(
    "beside",
    [
        AttemptResult(Outcome.PERMANENT, 5_000.0, 422, "HTTP 422: invalid parameters"),
        AttemptResult(Outcome.PERMANENT, 0.0, None, "route 'x' is no longer configured"),
    ],
    ids=["4xx", "not sent"],
)
def test_answers_other_than_a_created_flow_run_are_not_prefects_pace(
    gate: ConnectionGate, clock: ManualClock, beside: AttemptResult
) -> None:
    for _ in range(200):
        serve(gate, clock, flat, 5)
        gate.observe(beside)  # slow, and not a flow run: neither latency nor a rate
    assert gate.limit == MAX_CONCURRENCY


def test_a_refused_connection_neither_halves_the_window_nor_counts_as_a_rate(
    gate: ConnectionGate, clock: ManualClock
) -> None:
    grow(gate, clock, 2)
    refused = AttemptResult(Outcome.TRANSIENT, 1.0, None, "ConnectError: refused")
    gate.observe(refused)
    assert gate.limit == 2
    clock.advance(60.0)  # Prefect was away a minute: a rate across that is not its pace
    serve(gate, clock, flat, 5 * EPOCH_COMPLETIONS)
    assert gate.limit > 2


async def test_a_window_never_full_is_not_grown(gate: ConnectionGate, clock: ManualClock) -> None:
    for _ in range(20 * EPOCH_COMPLETIONS):  # one delivery every 30 ms, nobody waiting
        async with gate.slot():
            clock.advance(flat(1))
        gate.observe(SUCCESS)
        clock.advance(0.010)
    assert gate.limit == 1


# -- the circuit ------------------------------------------------------------------------


def test_the_third_consecutive_transient_failure_opens_the_gate(gate: ConnectionGate) -> None:
    gate.observe(DOWN)
    gate.observe(DOWN)
    assert (gate.admits, gate.circuit, gate.free) == (True, Circuit.CLOSED, 2)

    gate.observe(DOWN)

    assert (gate.admits, gate.free, gate.circuit) == (False, 0, Circuit.OPEN)


@pytest.mark.parametrize(
    "answer",
    [SUCCESS, AttemptResult(Outcome.PERMANENT, 20.0, 409, "HTTP 409: conflict")],
    ids=["delivered", "permanent"],
)
def test_an_answer_between_failures_starts_the_count_again(
    gate: ConnectionGate, answer: AttemptResult
) -> None:
    for _ in range(2):
        gate.observe(DOWN)
    gate.observe(answer)
    for _ in range(2):
        gate.observe(DOWN)
    assert gate.circuit is Circuit.CLOSED
    assert not gate.recovered


def test_retry_after_opens_the_gate_until_then_and_it_half_opens_by_itself(
    gate: ConnectionGate, clock: ManualClock
) -> None:
    gate.observe(slow_down(30.0))
    assert (gate.circuit, gate.admits, gate.free) == (Circuit.OPEN, False, 0)

    clock.advance(29.9)
    assert (gate.admits, gate.free) == (False, 0)
    assert not gate.needs_probe()  # it said when to come back: no probing meanwhile

    clock.advance(0.1)
    assert (gate.admits, gate.free) == (True, 1)
    assert gate.circuit is Circuit.HALF_OPEN


def test_a_retry_after_longer_than_the_retry_cap_opens_the_gate_for_the_cap_only(
    clock: ManualClock,
) -> None:
    gate = ConnectionGate(max_concurrency=MAX_CONCURRENCY, retry_cap=60.0)
    gate.observe(slow_down(86400.0))
    assert (gate.admits, gate.circuit) == (False, Circuit.OPEN)

    clock.advance(60.0)
    assert (gate.admits, gate.circuit) == (True, Circuit.HALF_OPEN)


async def test_a_half_open_gate_admits_one_trial_and_its_success_closes_it(
    gate: ConnectionGate, clock: ManualClock
) -> None:
    gate.observe(slow_down(1.0))
    clock.advance(1.0)
    assert (gate.free, gate.circuit) == (1, Circuit.HALF_OPEN)

    async with gate.slot():
        assert (gate.admits, gate.free) == (False, 0)
    gate.observe(SUCCESS)

    assert (gate.admits, gate.circuit, gate.free) == (True, Circuit.CLOSED, 2 * gate.limit)
    assert gate.recovered


async def test_a_failed_trial_opens_the_gate_again_and_the_delivery_behind_it_is_not_tried(
    gate: ConnectionGate, clock: ManualClock
) -> None:
    gate.observe(slow_down(1.0))
    clock.advance(1.0)

    waiting = asyncio.Event()

    async def second_delivery() -> None:
        waiting.set()
        await enter(gate)

    async with gate.slot():
        behind = asyncio.create_task(second_delivery())
        await waiting.wait()
    gate.observe(DOWN)

    with pytest.raises(GateClosed):  # not tried: it is given back, untouched
        await behind
    assert (gate.circuit, gate.admits, gate.free, gate.in_flight) == (Circuit.OPEN, False, 0, 0)
    assert not gate.recovered
    clock.advance(PROBE_FIRST)
    assert gate.needs_probe()


def test_a_half_open_gate_with_a_delivery_assigned_has_no_room(
    gate: ConnectionGate, clock: ManualClock
) -> None:
    gate.observe(slow_down(1.0))
    clock.advance(1.0)
    gate.load = 1
    assert (gate.admits, gate.free) == (True, 0)


def test_needs_probe_only_when_open_without_retry_after_and_the_time_has_come(
    gate: ConnectionGate, clock: ManualClock
) -> None:
    assert not gate.needs_probe()  # closed

    open_gate(gate)
    assert not gate.needs_probe()
    clock.advance(PROBE_FIRST - 0.01)
    assert not gate.needs_probe()
    clock.advance(0.01)
    assert gate.needs_probe()

    gate.circuit = Circuit.HALF_OPEN
    assert not gate.needs_probe()


async def test_slot_raises_gate_closed_while_the_gate_is_open(gate: ConnectionGate) -> None:
    open_gate(gate)
    with pytest.raises(GateClosed):
        await enter(gate)
    assert gate.in_flight == 0


# -- the probe --------------------------------------------------------------------------


async def test_a_successful_probe_half_opens_the_gate(
    gate: ConnectionGate, clock: ManualClock
) -> None:
    open_gate(gate)
    clock.advance(PROBE_FIRST)
    asked: list[str] = []

    def healthy(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(200, json=True if request.url.path == "/api/health" else [])

    async with mock_connection(healthy) as connection:
        await gate.probe(connection)

    assert asked[0] == "/api/health"
    assert (gate.circuit, gate.admits, gate.free) == (Circuit.HALF_OPEN, True, 1)
    assert not gate.needs_probe()


async def test_a_failed_probe_keeps_the_gate_open_and_waits_longer_up_to_the_cap(
    gate: ConnectionGate, clock: ManualClock
) -> None:
    open_gate(gate)
    clock.advance(PROBE_FIRST)
    gaps = []
    async with PrefectConnection(
        "main", REFUSED_URL, api_version=PREFECT_API_VERSION, timeout=5.0
    ) as connection:
        for _ in range(7):
            assert gate.needs_probe()
            await gate.probe(connection)
            assert (gate.circuit, gate.admits) == (Circuit.OPEN, False)
            gaps.append(time_to_next_probe(gate, clock))

    assert gaps == [0.5, 1.0, 2.0, 4.0, PROBE_CAP, PROBE_CAP, PROBE_CAP]


def time_to_next_probe(gate: ConnectionGate, clock: ManualClock, step: float = 0.25) -> float:
    """Advance the clock in steps until the gate wants a probe; the time that took."""
    waited = 0.0
    while not gate.needs_probe():
        clock.advance(step)
        waited += step
        assert waited <= 2 * PROBE_CAP, "the probe interval is not capped"
    return waited


# -- the rate cap (real time: the cap sleeps on asyncio's clock) --------------------------

RATE = 20.0
# The start times are read just after the gate's own reading: a little slack for that.
CLOCK_SLACK = 0.1 / RATE


async def test_the_rate_cap_spaces_out_starts_even_when_the_window_has_room() -> None:
    gate = ConnectionGate(max_concurrency=MAX_CONCURRENCY, max_rate=RATE)
    with pytest.MonkeyPatch.context() as patch:  # the window grown on a clock of its own
        clock = ManualClock()
        patch.setattr(app.delivery.gate, "time", clock)
        grow(gate, clock, MAX_CONCURRENCY)  # four may be in flight: only the cap holds starts back
    starts: list[float] = []

    async def deliver() -> None:
        async with gate.slot():
            starts.append(time.monotonic())
            await asyncio.sleep(0)

    await asyncio.gather(*(deliver() for _ in range(10)))

    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert len(gaps) == 9
    assert min(gaps) >= 1 / RATE - CLOCK_SLACK, gaps

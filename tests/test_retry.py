"""Retry decisions without a network: how Prefect's answers are classified, Retry-After,
the backoff, what an attempt does to a delivery, and the per-connection gate."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

import app.gate
from app.dispatcher import RetryPolicy, plan_next
from app.gate import PROBE_CAP, PROBE_FIRST, Circuit, ConnectionGate, GateClosed
from app.prefect import (
    AttemptResult,
    Outcome,
    PrefectRequest,
    classify_status,
    parse_retry_after,
)
from app.store import DEAD, DELIVERED, PENDING, DeliveryRecord
from tests.stub import REFUSED_URL, connection_to, stub_server

pytestmark = pytest.mark.anyio

# -- classification ---------------------------------------------------------------------

STATUS_TABLE: list[tuple[int, Outcome]] = [
    (200, Outcome.DELIVERED),
    (201, Outcome.DELIVERED),
    *((s, Outcome.PERMANENT) for s in (400, 401, 403, 404, 409, 411, 413, 422, 405, 307)),
    *((s, Outcome.TRANSIENT) for s in (408, 429, 500, 502, 503, 504)),
]


@pytest.mark.parametrize(("status", "outcome"), STATUS_TABLE)
def test_a_status_is_delivered_permanent_or_transient(status: int, outcome: Outcome) -> None:
    assert classify_status(status) is outcome


# -- Retry-After ------------------------------------------------------------------------

NOW = datetime(2026, 11, 28, 6, 15, tzinfo=UTC)


def http_date(seconds_from_now: float) -> str:
    return formatdate(NOW.timestamp() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        (http_date(30), 30.0),
        (http_date(-30), 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_retry_after_is_read_as_seconds_or_as_an_http_date(value: str, seconds: float) -> None:
    assert parse_retry_after(value, now=NOW) == pytest.approx(seconds, abs=1.0)


@pytest.mark.parametrize("value", ["soon", "-5", "1.5", "Wed, 99 Foo", "", "   ", None])
def test_an_unreadable_retry_after_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


@pytest.mark.parametrize("value", ["\u00b2", "\u00b9\u00b2\u00b3"])
def test_superscript_digits_in_retry_after_are_unreadable_not_an_error(value: str) -> None:
    # "²".isdigit() is True, but float("²") raises: a header the client decodes from
    # latin-1 or UTF-8 must not make the parser raise.
    assert parse_retry_after(value, now=NOW) is None


async def test_a_garbled_retry_after_still_gives_a_transient_result() -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=503, headers={"Retry-After": "\u00b2"})

    async with stub_server(answer) as url, connection_to(f"{url}/api") as connection:
        result = await connection.create_flow_run(PrefectRequest("deployments/x/create", {}))

    assert (result.outcome, result.status_code, result.retry_after) == (
        Outcome.TRANSIENT,
        503,
        None,
    )


async def test_a_redirect_is_a_permanent_error_and_never_followed() -> None:
    followed: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        if request.path.startswith("/elsewhere"):
            followed.append(request.headers.get("authorization", ""))
            return web.json_response({"id": "run-1"}, status=201)
        return web.Response(status=307, headers={"Location": "/elsewhere/create"})

    async with (
        stub_server(answer) as url,
        connection_to(f"{url}/api", api_key=SecretStr("pnu_key_1234")) as connection,
    ):
        result = await connection.create_flow_run(PrefectRequest("deployments/x/create", {}))

    assert (result.outcome, result.status_code, result.flow_run_id) == (
        Outcome.PERMANENT,
        307,
        None,
    )
    assert followed == []


# -- backoff ----------------------------------------------------------------------------

POLICY = RetryPolicy(max_attempts=5, max_age=3600.0, base=5.0, cap=100.0)


@pytest.mark.parametrize(
    ("attempt", "nominal"),
    [(1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0), (5, 80.0), (6, 100.0), (7, 100.0)],
)
def test_backoff_doubles_from_the_base_up_to_the_cap(attempt: int, nominal: float) -> None:
    assert replace(POLICY, jitter=0.0).backoff(attempt) == nominal
    samples = [POLICY.backoff(attempt) for _ in range(200)]
    assert all(0.8 * nominal <= s <= 1.2 * nominal for s in samples)
    assert len(set(samples)) > 1  # jittered, so retries of many deliveries spread out


@pytest.mark.parametrize("attempt", [41, 1_000, 10**9, 10**30])
def test_backoff_of_a_huge_attempt_number_stays_under_the_jittered_cap(attempt: int) -> None:
    delays = [POLICY.backoff(attempt) for _ in range(50)]
    assert all(0.8 * POLICY.cap <= d <= 1.2 * POLICY.cap for d in delays)


# -- plan_next --------------------------------------------------------------------------

T0 = 1_800_000_000.0
STEADY = RetryPolicy(max_attempts=5, max_age=3600.0, base=5.0, cap=100.0, jitter=0.0)


def delivery(**overrides: Any) -> DeliveryRecord:
    values: dict[str, Any] = {
        "id": "d1",
        "event_id": "e1",
        "route": "main",
        "connection": "prefect",
        "idempotency_key": "exec-1",
        "state": PENDING,
        "attempts": 1,
        "created_at": T0,
        "window_started_at": T0,
        "next_attempt_at": T0,
        "lease_owner": "worker",
        "lease_expires_at": T0 + 60,
        "flow_run_id": None,
        "flow_run_url": None,
        "last_status_code": None,
        "last_error": None,
        "finished_at": None,
    }
    return DeliveryRecord(**(values | overrides))


def failed(
    status: int | None = 503, *, error: str = "HTTP 503: busy", retry_after: float | None = None
) -> AttemptResult:
    return AttemptResult(Outcome.TRANSIENT, 20.0, status, error, retry_after=retry_after)


@dataclass(frozen=True)
class Plan:
    name: str
    delivery: DeliveryRecord
    result: AttemptResult
    now: float
    changes: dict[str, Any]
    delay: float | None


PLANS = [
    Plan(
        "delivered",
        delivery(last_error="HTTP 503: earlier"),
        AttemptResult(Outcome.DELIVERED, 20.0, 201, flow_run_id="run-1", created=True),
        T0 + 1,
        {
            "state": DELIVERED,
            "flow_run_id": "run-1",
            "finished_at": T0 + 1,
            "last_status_code": 201,
            "last_error": None,
        },
        None,
    ),
    Plan(
        "permanent at once",
        delivery(attempts=1),
        AttemptResult(Outcome.PERMANENT, 20.0, 409, "HTTP 409: unknown flow"),
        T0 + 1,
        {
            "state": DEAD,
            "finished_at": T0 + 1,
            "last_status_code": 409,
            "last_error": "HTTP 409: unknown flow",
        },
        None,
    ),
    Plan(
        "a busy 503 comes back in about a second, the first few times",
        delivery(attempts=3),
        failed(),
        T0 + 100,
        {
            "state": PENDING,
            "next_attempt_at": T0 + 101,
            "last_status_code": 503,
            "last_error": "HTTP 503: busy",
        },
        1.0,
    ),
    Plan(
        "transient backs off",
        delivery(attempts=4),
        failed(),
        T0 + 100,
        {
            "state": PENDING,
            "next_attempt_at": T0 + 140,
            "last_status_code": 503,
            "last_error": "HTTP 503: busy",
        },
        40.0,
    ),
    Plan(
        "Retry-After wins over the backoff",
        delivery(attempts=1),
        failed(429, error="HTTP 429: slow down", retry_after=42.0),
        T0 + 1,
        {
            "state": PENDING,
            "next_attempt_at": T0 + 43,
            "last_status_code": 429,
            "last_error": "HTTP 429: slow down",
        },
        42.0,
    ),
    Plan(
        "connection error",
        delivery(attempts=2),
        failed(None, error="ConnectError: refused"),
        T0 + 1,
        {
            "state": PENDING,
            "next_attempt_at": T0 + 11,
            "last_status_code": None,
            "last_error": "ConnectError: refused",
        },
        10.0,
    ),
    Plan(
        "gives up at max_attempts",
        delivery(attempts=STEADY.max_attempts),
        failed(),
        T0 + 100,
        {
            "state": DEAD,
            "finished_at": T0 + 100,
            "last_status_code": 503,
            "last_error": f"gave up after {STEADY.max_attempts} attempts; last: HTTP 503: busy",
        },
        None,
    ),
    Plan(
        "gives up past max_age",
        delivery(attempts=2),
        failed(),
        T0 + STEADY.max_age + 1,
        {
            "state": DEAD,
            "finished_at": T0 + STEADY.max_age + 1,
            "last_status_code": 503,
            "last_error": "gave up after 3601 s and 2 attempts; last: HTTP 503: busy",
        },
        None,
    ),
    Plan(
        "max_age counts from a replay's window",
        delivery(attempts=2, created_at=T0 - 10 * STEADY.max_age),
        failed(500, error="HTTP 500: oops"),
        T0 + 1,
        {
            "state": PENDING,
            "next_attempt_at": T0 + 11,
            "last_status_code": 500,
            "last_error": "HTTP 500: oops",
        },
        10.0,
    ),
]


@pytest.mark.parametrize("plan", PLANS, ids=[p.name for p in PLANS])
def test_plan_next_turns_an_attempt_into_the_deliverys_next_state(plan: Plan) -> None:
    assert plan_next(plan.delivery, plan.result, STEADY, plan.now) == (plan.changes, plan.delay)


def test_plan_next_backs_off_with_the_policys_jitter() -> None:
    changes, delay = plan_next(
        delivery(attempts=2), failed(500, error="HTTP 500: oops"), POLICY, T0
    )
    assert delay is not None
    assert 8.0 <= delay <= 12.0
    assert changes["next_attempt_at"] == T0 + delay


# -- the gate ---------------------------------------------------------------------------


class Clock:
    """The gate's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(app.gate, "time", fake)  # the gate's clock only, not asyncio's
    return fake


@pytest.fixture
def gate(clock: Clock) -> ConnectionGate:
    return ConnectionGate(max_concurrency=4)


SUCCESS = AttemptResult(Outcome.DELIVERED, 20.0, 201, flow_run_id="run-1")
DOWN = failed()


def open_gate(gate: ConnectionGate) -> None:
    for _ in range(3):
        gate.observe(DOWN)
    assert gate.circuit is Circuit.OPEN


async def enter(gate: ConnectionGate) -> None:
    async with gate.slot():
        pass


def test_a_closed_gate_admits_until_its_concurrency_is_taken(gate: ConnectionGate) -> None:
    assert (gate.admits, gate.circuit) == (True, Circuit.CLOSED)
    assert gate.free >= 1
    gate.load = gate.max_concurrency
    assert (gate.admits, gate.free) == (True, 0)


def test_the_third_consecutive_transient_failure_opens_the_gate(gate: ConnectionGate) -> None:
    gate.observe(DOWN)
    gate.observe(DOWN)
    assert (gate.admits, gate.circuit) == (True, Circuit.CLOSED)
    assert gate.free >= 1

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
    gate: ConnectionGate, clock: Clock
) -> None:
    gate.observe(failed(429, retry_after=30.0))
    assert (gate.circuit, gate.admits, gate.free) == (Circuit.OPEN, False, 0)

    clock.advance(29.9)
    assert (gate.admits, gate.free) == (False, 0)
    assert not gate.needs_probe()  # it said when to come back: no probing meanwhile

    clock.advance(0.1)
    assert (gate.admits, gate.free) == (True, 1)
    assert gate.circuit is Circuit.HALF_OPEN


async def test_a_half_open_gate_admits_one_trial_and_its_success_closes_it(
    gate: ConnectionGate, clock: Clock
) -> None:
    gate.observe(failed(429, retry_after=1.0))
    clock.advance(1.0)
    assert (gate.free, gate.circuit) == (1, Circuit.HALF_OPEN)

    async with gate.slot():
        assert (gate.admits, gate.free) == (False, 0)
    gate.observe(SUCCESS)

    assert (gate.admits, gate.circuit) == (True, Circuit.CLOSED)
    assert gate.free >= 1
    assert gate.recovered


async def test_a_failed_trial_opens_the_gate_again(gate: ConnectionGate, clock: Clock) -> None:
    gate.observe(failed(429, retry_after=1.0))
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
    assert (gate.circuit, gate.admits, gate.free) == (Circuit.OPEN, False, 0)
    assert not gate.recovered
    clock.advance(PROBE_FIRST)
    assert gate.needs_probe()


def test_a_half_open_gate_with_a_delivery_assigned_has_no_room(
    gate: ConnectionGate, clock: Clock
) -> None:
    gate.observe(failed(429, retry_after=1.0))
    clock.advance(1.0)
    gate.load = 1
    assert (gate.admits, gate.free) == (True, 0)


def test_needs_probe_only_when_open_without_retry_after_and_the_time_has_come(
    gate: ConnectionGate, clock: Clock
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


async def test_a_successful_probe_half_opens_the_gate(gate: ConnectionGate, clock: Clock) -> None:
    open_gate(gate)
    clock.advance(PROBE_FIRST)

    async def healthy(request: web.Request) -> web.Response:
        return web.json_response(True if request.path == "/api/health" else [])

    async with stub_server(healthy) as url, connection_to(f"{url}/api") as connection:
        await gate.probe(connection)

    assert (gate.circuit, gate.admits, gate.free) == (Circuit.HALF_OPEN, True, 1)
    assert not gate.needs_probe()


async def test_a_failed_probe_keeps_the_gate_open_and_waits_longer_up_to_the_cap(
    gate: ConnectionGate, clock: Clock
) -> None:
    open_gate(gate)
    clock.advance(PROBE_FIRST)
    gaps = []
    async with connection_to(REFUSED_URL) as connection:
        for _ in range(7):
            assert gate.needs_probe()
            await gate.probe(connection)
            assert (gate.circuit, gate.admits) == (Circuit.OPEN, False)
            gaps.append(time_to_next_probe(gate, clock))

    assert gaps == [0.5, 1.0, 2.0, 4.0, PROBE_CAP, PROBE_CAP, PROBE_CAP]


def time_to_next_probe(gate: ConnectionGate, clock: Clock, step: float = 0.25) -> float:
    """Advance the clock in steps until the gate wants a probe; the time that took."""
    waited = 0.0
    while not gate.needs_probe():
        clock.advance(step)
        waited += step
        assert waited <= 2 * PROBE_CAP, "the probe interval is not capped"
    return waited


async def test_the_rate_cap_spaces_out_starts() -> None:
    gate = ConnectionGate(max_concurrency=4, max_rate=20)
    started = time.monotonic()
    for _ in range(10):
        await enter(gate)
    elapsed = time.monotonic() - started

    # Ten starts at 20 per second: the first at once, nine more 50 ms apart.
    assert elapsed >= 0.45 - 0.01

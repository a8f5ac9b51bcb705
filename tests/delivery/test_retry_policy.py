"""The retry policy without a network: the jittered, capped exponential backoff, and
``plan_next``: what one attempt's result makes of its delivery, and when it is tried again."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest

from app.delivery.client import AttemptResult, Outcome
from app.delivery.turn import RetryPolicy, plan_next
from app.storage.records import DeliveryRecord, DeliveryState, DeliveryUpdate

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


def test_a_busy_retry_comes_back_in_about_a_second() -> None:
    delays = [POLICY.busy_retry() for _ in range(200)]
    assert all(0.8 <= d <= 1.2 for d in delays)
    assert len(set(delays)) > 1


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
        "state": DeliveryState.PENDING,
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
    update: DeliveryUpdate
    delay: float | None


def pending(status: int | None, error: str, retry_at: float) -> DeliveryUpdate:
    return DeliveryUpdate(DeliveryState.PENDING, status, error, next_attempt_at=retry_at)


def dead(status: int | None, error: str, now: float) -> DeliveryUpdate:
    return DeliveryUpdate(DeliveryState.DEAD, status, error, finished_at=now)


PLANS = [
    Plan(
        "delivered: the run is kept and the earlier error cleared",
        delivery(last_error="HTTP 503: earlier"),
        AttemptResult(Outcome.DELIVERED, 20.0, 201, flow_run_id="run-1", created=True),
        T0 + 1,
        DeliveryUpdate(DeliveryState.DELIVERED, 201, None, flow_run_id="run-1", finished_at=T0 + 1),
        None,
    ),
    Plan(
        "a permanent error is dead at once",
        delivery(attempts=1),
        AttemptResult(Outcome.PERMANENT, 20.0, 409, "HTTP 409: unknown flow"),
        T0 + 1,
        dead(409, "HTTP 409: unknown flow", T0 + 1),
        None,
    ),
    Plan(
        "a busy 503 comes back in about a second, the first few times",
        delivery(attempts=3),
        failed(),
        T0 + 100,
        pending(503, "HTTP 503: busy", T0 + 101),
        1.0,
    ),
    Plan(
        "a busy 429 without Retry-After comes back in about a second too",
        delivery(attempts=1),
        failed(429, error="HTTP 429: slow down"),
        T0 + 100,
        pending(429, "HTTP 429: slow down", T0 + 101),
        1.0,
    ),
    Plan(
        "a transient error past the busy retries backs off",
        delivery(attempts=4),
        failed(),
        T0 + 100,
        pending(503, "HTTP 503: busy", T0 + 140),
        40.0,
    ),
    Plan(
        "Retry-After wins over the backoff",
        delivery(attempts=1),
        failed(429, error="HTTP 429: slow down", retry_after=42.0),
        T0 + 1,
        pending(429, "HTTP 429: slow down", T0 + 43),
        42.0,
    ),
    Plan(
        "a connection error backs off",
        delivery(attempts=2),
        failed(None, error="ConnectError: refused"),
        T0 + 1,
        pending(None, "ConnectError: refused", T0 + 11),
        10.0,
    ),
    Plan(
        "gives up at max_attempts",
        delivery(attempts=STEADY.max_attempts),
        failed(),
        T0 + 100,
        dead(503, f"gave up after {STEADY.max_attempts} attempts; last: HTTP 503: busy", T0 + 100),
        None,
    ),
    Plan(
        "gives up when the retry would fall past max_age",
        delivery(attempts=2),
        failed(),
        T0 + STEADY.max_age + 1,
        dead(
            503,
            "gave up after 3601 s and 2 attempts; last: HTTP 503: busy",
            T0 + STEADY.max_age + 1,
        ),
        None,
    ),
    Plan(
        "Retry-After waits at most the cap",
        delivery(attempts=2),
        failed(503, retry_after=86400.0),
        T0 + 1,
        pending(503, "HTTP 503: busy", T0 + 1 + STEADY.cap),
        STEADY.cap,
    ),
    Plan(
        "Retry-After past max_age waits until then: a header alone never dead-letters",
        delivery(attempts=2),
        failed(429, error="HTTP 429: slow down", retry_after=STEADY.cap),
        T0 + STEADY.max_age - 30,
        pending(429, "HTTP 429: slow down", T0 + STEADY.max_age),
        30.0,
    ),
    Plan(
        "the attempt at max_age that fails again is the one that gives up",
        delivery(attempts=3),
        failed(429, error="HTTP 429: slow down", retry_after=STEADY.cap),
        T0 + STEADY.max_age + 1,
        dead(
            429,
            "gave up after 3601 s and 3 attempts; last: HTTP 429: slow down",
            T0 + STEADY.max_age + 1,
        ),
        None,
    ),
    Plan(
        "max_age counts from a replay's window",
        delivery(attempts=2, created_at=T0 - 10 * STEADY.max_age),
        failed(500, error="HTTP 500: oops"),
        T0 + 1,
        pending(500, "HTTP 500: oops", T0 + 11),
        10.0,
    ),
]


@pytest.mark.parametrize("plan", PLANS, ids=[p.name for p in PLANS])
def test_plan_next_turns_an_attempt_into_the_deliverys_next_state(plan: Plan) -> None:
    assert plan_next(plan.delivery, plan.result, STEADY, plan.now) == (plan.update, plan.delay)


def test_plan_next_backs_off_with_the_policys_jitter() -> None:
    update, delay = plan_next(delivery(attempts=2), failed(500, error="HTTP 500: oops"), POLICY, T0)
    assert delay is not None
    assert 8.0 <= delay <= 12.0
    assert update == pending(500, "HTTP 500: oops", T0 + delay)

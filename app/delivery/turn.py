"""One delivery's turn, as plain functions: ``attempt_delivery`` sends its request to
Prefect, ``plan_next`` decides what the answer means for it (delivered, retried after a
backoff, or dead; ``unexpected_failure`` makes an exception an answer like the others),
and ``log_attempt`` writes the one line each attempt gets; a :class:`Turn` is what came
of it. The :class:`app.delivery.dispatcher.Dispatcher` only schedules them (and an emission's
read-back, :mod:`app.delivery.readback`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import structlog

from app.config import Settings
from app.delivery.client import AttemptResult, Outcome, PrefectConnection
from app.routing.event import ErathosEvent
from app.routing.prefect_event import is_emission, too_large
from app.routing.router import FlowTarget, PrefectRequest, Router
from app.routing.sets import emission_request_of, window_values
from app.routing.templates import Lookup
from app.storage.records import DROP_IN_ROUTE, Claim, DeliveryRecord, DeliveryState, DeliveryUpdate

log = structlog.get_logger("erathos_prefect_bridge.delivery.turn")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter and a cap; a delivery dies after ``max_attempts``
    or once ``max_age`` has passed since it was first (or last replayed) due."""

    max_attempts: int = 30
    max_age: float = 86400.0
    base: float = 5.0
    cap: float = 3600.0
    jitter: float = 0.2  # +/- 20 %
    overload_retries: int = 3  # 503/429 without Retry-After: retried in ~1 s this often

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            max_age=settings.max_age.total_seconds(),
            base=settings.retry_base.total_seconds(),
            cap=settings.retry_cap.total_seconds(),
        )

    def busy_retry(self) -> float:
        """Delay after a 503/429 without Retry-After: about a second."""
        return float(random.uniform(1 - self.jitter, 1 + self.jitter))  # noqa: S311

    def backoff(self, attempt: int) -> float:
        """Delay after the ``attempt``-th failed attempt (1-based)."""
        delay = min(self.cap, self.base * 2 ** min(attempt - 1, 40))
        spread = random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311 (jitter, not crypto)
        return float(delay * spread)


def plan_next(
    delivery: DeliveryRecord, result: AttemptResult, policy: RetryPolicy, now: float
) -> tuple[DeliveryUpdate, float | None]:
    """What this attempt makes of the delivery, and the retry delay (if any). The retry
    budget counts the attempts since the delivery was last replayed."""
    status = result.status_code
    made = delivery.budget_used
    if result.outcome is Outcome.DELIVERED:
        update = DeliveryUpdate(
            DeliveryState.DELIVERED, status, None, flow_run_id=result.flow_run_id, finished_at=now
        )
        return update, None
    if result.outcome is Outcome.PERMANENT:
        return DeliveryUpdate(DeliveryState.DEAD, status, result.error, finished_at=now), None
    if result.retry_after is not None:
        # Prefect's wait, at most the policy's cap, and never past the delivery's age
        # limit: a header alone never dead-letters it (its next failure may).
        left = delivery.window_started_at + policy.max_age - now
        delay = max(0.0, min(result.retry_after, policy.cap, left))
    elif status in (429, 503) and made <= policy.overload_retries:
        # "Busy, try again": Prefect is up, and the connection's window has just halved.
        # Coming back in about a second keeps the backlog moving in order, where an
        # exponential backoff would hold this delivery back long after Prefect recovered.
        delay = policy.busy_retry()
    else:
        delay = policy.backoff(made)
    retry_at = now + delay
    if made >= policy.max_attempts:
        error = f"gave up after {made} attempts; last: {result.error}"
        return DeliveryUpdate(DeliveryState.DEAD, status, error, finished_at=now), None
    if retry_at - delivery.window_started_at > policy.max_age:
        age = now - delivery.window_started_at
        error = f"gave up after {age:.0f} s and {made} attempts; last: {result.error}"
        return DeliveryUpdate(DeliveryState.DEAD, status, error, finished_at=now), None
    update = DeliveryUpdate(DeliveryState.PENDING, status, result.error, next_attempt_at=retry_at)
    return update, delay


async def attempt_delivery(
    claim: Claim, router: Router, connections: dict[str, PrefectConnection], lookup: Lookup
) -> tuple[AttemptResult, PrefectConnection | None]:
    """Send one delivery's request, built from the current route configuration (so a
    fixed setting takes effect on the next retry or replay): a flow run, or an event."""
    if is_emission(claim.delivery.route):
        return await _emit(claim, router, connections)
    if claim.delivery.route == DROP_IN_ROUTE:
        connection = connections.get(claim.delivery.connection)
        if connection is None:
            return _config_error(f"connection {claim.delivery.connection!r} is gone"), None
        stored = claim.event.payload[DROP_IN_ROUTE]
        # The delivery's key, not the stored body's: a replay with a new run has a new one.
        body = {**stored["body"], "idempotency_key": claim.delivery.idempotency_key}
        return await connection.create_flow_run(PrefectRequest(stored["path"], body)), connection
    route = router.route(claim.delivery.route)
    if route is None:
        return _config_error(f"route {claim.delivery.route!r} is no longer configured"), None
    connection = connections.get(route.connection)
    if connection is None:
        return _config_error(f"connection {route.connection!r} is not configured"), None
    try:
        key, window = claim.delivery.idempotency_key, window_values(claim.event)
        if window is not None:  # a set's window: its values, not one load's
            body = route.flow_run_body(None, key, lookup, window=window)
        else:
            body = route.flow_run_body(
                ErathosEvent.model_validate(claim.event.payload), key, lookup
            )
    except ValueError as exc:  # pydantic's ValidationError, a template that cannot render
        # Never a crash loop: an event stored by an older release that this one reads
        # differently is a dead letter with the reason, to fix and replay. Nothing was
        # sent: no connection, so it is not taken for Prefect's answer (the circuit, the
        # window, the metrics of requests).
        return _config_error(f"the stored event cannot be rendered: {exc}"), None
    # A target named by name: its id, from the connection's cache or a lookup (a flow by
    # name is created when Prefect has none by that name yet).
    resolved = None
    target = route.target
    if target.name is not None:
        if isinstance(target, FlowTarget):
            resolved, failure = await connection.resolve_flow(target.name)
        else:
            resolved, failure = await connection.resolve_deployment(target.name_path)
        if failure is not None:
            return failure, connection
    return await connection.create_flow_run(route.request(body, resolved)), connection


async def _emit(
    claim: Claim, router: Router, connections: dict[str, PrefectConnection]
) -> tuple[AttemptResult, PrefectConnection | None]:
    """Emit the stored event as a Prefect event on the delivery's connection, unless
    that connection no longer emits events or the event is too large to send."""
    name = claim.delivery.connection
    connection = connections.get(name)
    if connection is None:
        return _config_error(f"connection {name!r} is not configured"), None
    if name not in router.emit_on:
        return _config_error(
            f"connection {name!r} no longer emits Prefect events (BRIDGE_PREFECT_EVENTS, "
            'or the routes file connection\'s "events")'
        ), None
    try:
        request = emission_request_of(claim.event, claim.delivery.idempotency_key)
    except ValueError as exc:  # pydantic's ValidationError: stored by an older release
        return _config_error(f"the stored event cannot be rendered: {exc}"), None
    refused = too_large(request)
    if refused is not None:
        return _config_error(refused), None
    return await connection.emit_events(request), connection


def _config_error(message: str) -> AttemptResult:
    return AttemptResult(Outcome.PERMANENT, 0.0, error=message)


def unexpected_failure(exc: Exception) -> AttemptResult:
    """An exception no step of a turn expected (a bug, a library's surprise) as the
    attempt it ended: transient, so ``plan_next`` retries it with the backoff and
    dead-letters it by the budget like any other failure, with what happened as its error."""
    return AttemptResult(Outcome.TRANSIENT, 0.0, error=f"unexpected error: {_first_line(exc)}")


def _first_line(exc: Exception) -> str:
    text = str(exc).split("\n")[0][:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_LEVELS = {DeliveryState.DELIVERED: logging.INFO, DeliveryState.PENDING: logging.WARNING}


def log_attempt(
    claim: Claim,
    connection: str,
    result: AttemptResult,
    update: DeliveryUpdate,
    retry_in: float | None,
) -> None:
    """One line per attempt: info when delivered, warning when retried, error when dead."""
    log.log(
        _LEVELS.get(update.state, logging.ERROR),
        "delivery attempt",
        execution_id=claim.event.execution_id,
        event_id=claim.event.id,
        delivery_id=claim.delivery.id,
        job_id=claim.event.job_id,
        table_name=claim.event.table_name,
        route=claim.delivery.route,
        connection=connection,
        attempt=claim.delivery.attempts,
        outcome=result.outcome.value,
        status_code=result.status_code,
        state=update.state.value,
        flow_run_id=result.flow_run_id,
        duration_ms=round(result.duration_ms, 1),
        retry_in=round(retry_in, 3) if retry_in is not None else None,
        error=result.error,
    )


@dataclass(frozen=True)
class Turn:
    """One delivery after its turn: its record as it stands now, and Prefect's answer
    when it was sent (None when it was not: it is queued, was still in flight when the
    caller stopped waiting, or was given back untried)."""

    delivery: DeliveryRecord
    result: AttemptResult | None = None


@contextmanager
def never_in_the_way(what: str, delivery_id: str) -> Iterator[None]:
    """Logging and metrics never stand between Prefect's answer and its record: a failure
    in them is logged (when logging itself works) and the turn goes on."""
    try:
        yield
    except Exception:
        with suppress(Exception):
            log.exception(what, delivery_id=delivery_id)


def turn_of(task: asyncio.Task[Turn] | None, delivery: DeliveryRecord) -> Turn:
    """The task's turn when it finished; else the delivery as it was stored, unsent (a
    task that failed was logged by ``Dispatcher._forget``, with its traceback)."""
    if task is None or not task.done() or task.cancelled() or task.exception() is not None:
        return Turn(delivery)
    return task.result()

"""The dispatcher: delivers stored deliveries to Prefect, retries them, dead-letters them.

``attempt_delivery`` (one request) and ``plan_next`` (what the answer means for
the delivery) are plain functions; the :class:`Dispatcher` only schedules them:
new deliveries at once, due retries from a polling loop, at most
``BRIDGE_MAX_CONCURRENCY`` requests per Prefect connection, optionally at most
``BRIDGE_MAX_RATE`` per second, and not at all while a connection asked us to
wait (``Retry-After``) or keeps failing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any

from app.event import ErathosEvent
from app.prefect import AttemptResult, Outcome, PrefectConnection
from app.routes import Router
from app.settings import Settings
from app.store import DEAD, DELIVERED, PENDING, Claim, DeliveryRecord, Store, StoreUnavailable
from app.templates import Lookup

log = logging.getLogger("erathos_prefect_bridge.dispatcher")

PRUNE_EVERY_SECONDS = 3600.0
CONNECTION_PAUSE_CAP = 30.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter and a cap; a delivery dies after ``max_attempts``
    or once ``max_age`` has passed since it was first (or last replayed) due."""

    max_attempts: int = 30
    max_age: float = 86400.0
    base: float = 5.0
    cap: float = 3600.0
    jitter: float = 0.2  # +/- 20 %

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            max_age=settings.max_age.total_seconds(),
            base=settings.retry_base.total_seconds(),
            cap=settings.retry_cap.total_seconds(),
        )

    def backoff(self, attempt: int) -> float:
        """Delay after the ``attempt``-th failed attempt (1-based)."""
        delay = min(self.cap, self.base * 2 ** min(attempt - 1, 40))
        spread = random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311 (jitter, not crypto)
        return float(delay * spread)


def plan_next(
    delivery: DeliveryRecord, result: AttemptResult, policy: RetryPolicy, now: float
) -> tuple[dict[str, Any], float | None]:
    """The delivery's new columns after this attempt, and the retry delay (if any)."""
    changes: dict[str, Any] = {"last_status_code": result.status_code}
    if result.outcome is Outcome.DELIVERED:
        changes |= {"state": DELIVERED, "flow_run_id": result.flow_run_id, "finished_at": now}
        changes["last_error"] = None
        return changes, None
    changes["last_error"] = result.error
    if result.outcome is Outcome.PERMANENT:
        return changes | {"state": DEAD, "finished_at": now}, None
    delay = (
        result.retry_after if result.retry_after is not None else policy.backoff(delivery.attempts)
    )
    retry_at = now + delay
    if delivery.attempts >= policy.max_attempts:
        changes["last_error"] = f"gave up after {delivery.attempts} attempts; last: {result.error}"
        return changes | {"state": DEAD, "finished_at": now}, None
    if retry_at - delivery.window_started_at > policy.max_age:
        age = now - delivery.window_started_at
        changes["last_error"] = (
            f"gave up after {age:.0f} s and {delivery.attempts} attempts; last: {result.error}"
        )
        return changes | {"state": DEAD, "finished_at": now}, None
    return changes | {"state": PENDING, "next_attempt_at": retry_at}, delay


async def attempt_delivery(
    claim: Claim, router: Router, connections: dict[str, PrefectConnection], lookup: Lookup
) -> tuple[AttemptResult, PrefectConnection | None]:
    """Send one delivery's flow run request, built from the current route configuration."""
    route = router.route(claim.delivery.route)
    if route is None:
        return _config_error(f"route {claim.delivery.route!r} is no longer configured"), None
    connection = connections.get(route.connection)
    if connection is None:
        return _config_error(f"connection {route.connection!r} is not configured"), None
    event = ErathosEvent.model_validate(claim.event.payload)
    request = route.flow_run_request(event, claim.delivery.idempotency_key, lookup)
    return await connection.create_flow_run(request), connection


def _config_error(message: str) -> AttemptResult:
    return AttemptResult(Outcome.PERMANENT, 0.0, error=message)


class ConnectionGate:
    """Admission to one Prefect connection: a concurrency cap, an optional rate cap,
    and a pause while the connection asked us to wait or keeps failing."""

    def __init__(self, max_concurrency: int, max_rate: float | None) -> None:
        self.max_concurrency = max_concurrency
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._interval = 1.0 / max_rate if max_rate else 0.0
        self._next_start = 0.0
        self.load = 0  # deliveries assigned to this connection: waiting or in flight
        self.paused_until = 0.0
        self._failures = 0

    @property
    def free(self) -> int:
        return max(0, self.max_concurrency - self.load) if not self.paused else 0

    @property
    def paused(self) -> bool:
        return time.monotonic() < self.paused_until

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._semaphore:
            while True:
                now = time.monotonic()
                wait = max(self.paused_until, self._next_start) - now
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            self._next_start = max(now, self._next_start) + self._interval
            yield

    def observe(self, result: AttemptResult) -> None:
        if result.outcome is not Outcome.TRANSIENT:
            self._failures = 0
            return
        self._failures += 1
        if result.retry_after is not None:
            pause = result.retry_after
        else:
            pause = min(CONNECTION_PAUSE_CAP, 0.25 * 2 ** min(self._failures - 1, 10))
        self.paused_until = max(self.paused_until, time.monotonic() + pause)


class Dispatcher:
    """Owns every delivery task of this process; started and stopped by the app's lifespan."""

    def __init__(
        self,
        store: Store,
        router: Router,
        connections: dict[str, PrefectConnection],
        lookup: Lookup,
        settings: Settings,
    ) -> None:
        self.store = store
        self.router = router
        self.connections = connections
        self.lookup = lookup
        self.policy = RetryPolicy.from_settings(settings)
        self.lease = settings.lease.total_seconds()
        self.poll_interval = settings.poll_interval.total_seconds()
        self.retention = settings.retention.total_seconds()
        self.owner = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.gates = {
            name: ConnectionGate(settings.max_concurrency, settings.max_rate)
            for name in connections
        }
        self._tasks: dict[str, asyncio.Task[DeliveryRecord]] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_prune = 0.0

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="dispatcher")

    async def stop(self, grace: float) -> None:
        """Stop claiming; let in-flight deliveries finish for ``grace`` seconds, then
        cancel the rest and give their leases back so the next start resumes them."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        pending = list(self._tasks.values())
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        unfinished = list(self._tasks)
        if unfinished:
            try:
                await self.store.release(self.owner, unfinished)
            except StoreUnavailable as exc:
                log.warning(
                    "could not release leases on shutdown (they expire by themselves): %s", exc
                )

    def wake(self) -> None:
        """Look for due deliveries now (after a replay, say) instead of at the next poll."""
        self._wake.set()

    def submit(self, claims: Iterable[Claim]) -> list[asyncio.Task[DeliveryRecord]]:
        """Start delivering claimed deliveries; returns one task per delivery."""
        tasks = []
        for claim in claims:
            existing = self._tasks.get(claim.delivery.id)
            if existing is not None:
                tasks.append(existing)
                continue
            task = asyncio.create_task(self._deliver(claim), name=f"delivery-{claim.delivery.id}")
            self._tasks[claim.delivery.id] = task
            task.add_done_callback(self._forget)
            tasks.append(task)
        return tasks

    def _forget(self, task: asyncio.Task[DeliveryRecord]) -> None:
        self._tasks.pop(task.get_name().removeprefix("delivery-"), None)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def _deliver(self, claim: Claim) -> DeliveryRecord:
        delivery = claim.delivery
        route = self.router.route(delivery.route)
        gate = self.gates.get(route.connection if route else delivery.connection)
        if gate is None:
            result, connection = await attempt_delivery(
                claim, self.router, self.connections, self.lookup
            )
            return await self._record(claim, time.time(), result, connection)
        gate.load += 1
        try:
            async with gate.slot():
                started = time.time()
                result, connection = await attempt_delivery(
                    claim, self.router, self.connections, self.lookup
                )
            gate.observe(result)
            return await self._record(claim, started, result, connection)
        finally:
            gate.load -= 1

    async def _record(
        self,
        claim: Claim,
        started: float,
        result: AttemptResult,
        connection: PrefectConnection | None,
    ) -> DeliveryRecord:
        delivery = claim.delivery
        now = time.time()
        changes, retry_in = plan_next(delivery, result, self.policy, now)
        if result.flow_run_id is not None and connection is not None:
            changes["flow_run_url"] = connection.flow_run_url(result.flow_run_id)
        _log_attempt(claim, result, changes, retry_in)
        try:
            held = await self.store.complete_attempt(
                delivery,
                self.owner,
                started_at=started,
                duration_ms=result.duration_ms,
                outcome=result.outcome.value,
                status_code=result.status_code,
                error=result.error,
                response_excerpt=result.response_excerpt,
                retry_in=retry_in,
                changes=changes,
            )
        except StoreUnavailable as exc:
            # The lease runs out and the delivery is tried again; Prefect's
            # idempotency key turns that retry into the same flow run.
            log.error("could not record attempt of delivery %s: %s", delivery.id, exc)
            return delivery
        if not held:
            log.warning("lease of delivery %s was lost; its new holder records it", delivery.id)
        return replace(delivery, lease_owner=None, lease_expires_at=None, **changes)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._claim_due()
                await self._prune_if_due()
            except StoreUnavailable as exc:
                log.error("store unavailable, retrying at the next poll: %s", exc)
            except Exception:
                log.exception("dispatcher loop failed; it goes on at the next poll")
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
            self._wake.clear()

    async def _claim_due(self) -> None:
        for name, gate in self.gates.items():
            free = gate.free
            if free <= 0:
                continue
            claims = await self.store.claim_due(self.owner, name, free, self.lease)
            self.submit(claim for claim in claims if claim.delivery.id not in self._tasks)

    async def _prune_if_due(self) -> None:
        now = time.time()
        if now - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        self._last_prune = now
        removed = await self.store.prune(now - self.retention)
        if removed:
            log.info("pruned %d finished events older than the retention period", removed)


def _log_attempt(
    claim: Claim, result: AttemptResult, changes: dict[str, Any], retry_in: float | None
) -> None:
    log.info(
        "delivery attempt",
        extra={
            "execution_id": claim.event.execution_id,
            "job_id": claim.event.job_id,
            "table_name": claim.event.table_name,
            "route": claim.delivery.route,
            "attempt": claim.delivery.attempts,
            "outcome": result.outcome.value,
            "status_code": result.status_code,
            "state": changes.get("state"),
            "flow_run_id": result.flow_run_id,
            "duration_ms": round(result.duration_ms, 1),
            "retry_in": retry_in,
            "error": result.error,
        },
    )

"""The dispatcher: delivers stored deliveries to Prefect, retries them, dead-letters them.

``attempt_delivery`` (one request) and ``plan_next`` (what the answer means for
the delivery) are plain functions; the :class:`Dispatcher` only schedules them:
new deliveries at once, due retries from a polling loop, at most
``BRIDGE_MAX_CONCURRENCY`` requests per Prefect connection, optionally at most
``BRIDGE_MAX_RATE`` per second, and not at all while a connection asked us to
wait (``Retry-After``) or is known to be down (see :mod:`app.gate`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any

import structlog

from app.event import ErathosEvent
from app.gate import ConnectionGate, GateClosed
from app.metrics import Metrics
from app.prefect import AttemptResult, Outcome, PrefectConnection, PrefectRequest
from app.routes import DROP_IN_ROUTE, DeploymentTarget, Router
from app.settings import Settings
from app.store import DEAD, DELIVERED, PENDING, Claim, DeliveryRecord, Store, StoreUnavailable
from app.templates import Lookup

log = structlog.get_logger("erathos_prefect_bridge.dispatcher")

PRUNE_EVERY_SECONDS = 3600.0


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
    if result.retry_after is not None:
        delay = result.retry_after
    elif result.status_code in (429, 503) and delivery.attempts <= policy.overload_retries:
        # "Busy, try again": Prefect is up, and the connection's window has just halved.
        # Coming back in about a second keeps the backlog moving in order, where an
        # exponential backoff would hold this delivery back long after Prefect recovered.
        delay = policy.busy_retry()
    else:
        delay = policy.backoff(delivery.attempts)
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
    """Send one delivery's flow run request, built from the current route configuration
    (so a fixed setting takes effect on the next retry or replay)."""
    if claim.delivery.route == DROP_IN_ROUTE:
        connection = connections.get(claim.delivery.connection)
        if connection is None:
            return _config_error(f"connection {claim.delivery.connection!r} is gone"), None
        request = PrefectRequest(**claim.event.payload[DROP_IN_ROUTE])
        return await connection.create_flow_run(request), connection
    route = router.route(claim.delivery.route)
    if route is None:
        return _config_error(f"route {claim.delivery.route!r} is no longer configured"), None
    connection = connections.get(route.connection)
    if connection is None:
        return _config_error(f"connection {route.connection!r} is not configured"), None
    try:
        event = ErathosEvent.model_validate(claim.event.payload)
        body = route.flow_run_body(event, claim.delivery.idempotency_key, lookup)
    except ValueError as exc:  # pydantic's ValidationError, a template that cannot render
        # Never a crash loop: an event stored by an older release that this one reads
        # differently is a dead letter with the reason, to fix and replay.
        return _config_error(f"the stored event cannot be rendered: {exc}"), connection
    deployment_id = None
    if isinstance(route.target, DeploymentTarget) and route.target.name is not None:
        deployment_id, failure = await connection.resolve_deployment(route.target.name_path)
        if failure is not None:
            return failure, connection
    return await connection.create_flow_run(route.request(body, deployment_id)), connection


def _config_error(message: str) -> AttemptResult:
    return AttemptResult(Outcome.PERMANENT, 0.0, error=message)


@dataclass(frozen=True)
class Delivered:
    """A delivery after one turn of the dispatcher, with the answer it got (None when it
    was not tried after all: the connection went down while it waited)."""

    delivery: DeliveryRecord
    result: AttemptResult | None


class Dispatcher:
    """Owns every delivery task of this process; started and stopped by the app's lifespan."""

    def __init__(
        self,
        store: Store,
        router: Router,
        connections: dict[str, PrefectConnection],
        lookup: Lookup,
        settings: Settings,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.router = router
        self.connections = connections
        self.lookup = lookup
        self.metrics = metrics if metrics is not None else Metrics(connections)
        self.policy = RetryPolicy.from_settings(settings)
        self.lease = settings.lease.total_seconds()
        self.poll_interval = settings.poll_interval.total_seconds()
        self.retention = settings.retention.total_seconds()
        self.owner = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.gates = {
            name: ConnectionGate(settings.max_concurrency, settings.max_rate)
            for name in connections
        }
        self._tasks: dict[str, asyncio.Task[Delivered]] = {}
        self._wake = asyncio.Event()
        # Whether the last claim of a connection filled its batch: only then is another
        # claim worth making the moment a delivery finishes (else: at the next poll).
        # (The loop's first claim, at start, finds out what an earlier run left.)
        self._backlog = dict.fromkeys(connections, False)
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
        running = dict(self._tasks)
        if not running:
            return
        _, still = await asyncio.wait(running.values(), timeout=grace)
        unfinished = [key for key, task in running.items() if task in still]
        for task in still:
            task.cancel()
        await asyncio.gather(*still, return_exceptions=True)
        if unfinished:
            log.info("shutdown: deliveries in flight given back", deliveries=len(unfinished))
            try:
                await self.store.release(self.owner, unfinished)
            except StoreUnavailable as exc:
                log.warning(
                    "leases not released on shutdown; they expire by themselves", error=str(exc)
                )

    def starts_now(self, connection: str) -> bool:
        """Whether a new delivery on this connection should be tried from the webhook
        at once (else the webhook answers "queued" and the polling loop sends it)."""
        gate = self.gates.get(connection)
        if gate is None:
            return False
        # Never ahead of older deliveries still waiting to be claimed: a backlog drains
        # oldest first, and under saturation new events queue behind it.
        return gate.free > 0 and not self._backlog.get(connection, False)

    def queued(self, connection: str) -> None:
        """A new delivery was stored unclaimed: the loop claims it (oldest first) as soon
        as a slot frees up."""
        if connection in self._backlog:
            self._backlog[connection] = True

    def wake(self) -> None:
        """Look for due deliveries now (after a replay, say) instead of at the next poll."""
        self._backlog = dict.fromkeys(self._backlog, True)
        self._wake.set()

    def submit(self, claims: Iterable[Claim]) -> list[asyncio.Task[Delivered]]:
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

    def _forget(self, task: asyncio.Task[Delivered]) -> None:
        self._tasks.pop(task.get_name().removeprefix("delivery-"), None)
        if any(self._backlog.values()):
            self._wake.set()  # a slot is free and more is due: claim now, not at the next poll

    async def _deliver(self, claim: Claim) -> Delivered:
        delivery = claim.delivery
        route = self.router.route(delivery.route)
        gate = self.gates.get(route.connection if route else delivery.connection)
        if gate is None:
            result, connection = await attempt_delivery(
                claim, self.router, self.connections, self.lookup
            )
            return Delivered(await self._record(claim, time.time(), result, connection), result)
        gate.load += 1
        try:
            async with gate.slot():
                if not await self._still_ours(delivery):
                    return Delivered(delivery, None)
                started = time.time()
                result, connection = await attempt_delivery(
                    claim, self.router, self.connections, self.lookup
                )
            gate.observe(result)
            return Delivered(await self._record(claim, started, result, connection), result)
        except GateClosed:
            # Not tried: the connection went down while it waited. Give it back
            # untouched; it is resumed with the others when the connection recovers.
            await self._release_untried(delivery)
            return Delivered(delivery, None)
        finally:
            gate.load -= 1

    async def _still_ours(self, delivery: DeliveryRecord) -> bool:
        """After waiting for a turn, renew the lease if half of it is gone, so a slow
        queue never lets another process send the same delivery at the same time."""
        expires = delivery.lease_expires_at or 0.0
        if expires - time.time() > self.lease / 2:
            return True
        try:
            if await self.store.renew(delivery.id, self.owner, self.lease):
                return True
        except StoreUnavailable as exc:
            log.error("lease not renewed", delivery_id=delivery.id, error=str(exc))
            return False
        log.warning("delivery taken over while it waited; not sent", delivery_id=delivery.id)
        return False

    async def _release_untried(self, delivery: DeliveryRecord) -> None:
        try:
            await self.store.release(self.owner, [delivery.id], untried=True)
        except StoreUnavailable as exc:
            log.error(
                "delivery not released; its lease runs out", delivery_id=delivery.id, error=str(exc)
            )

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
        connection_name = connection.name if connection is not None else delivery.connection
        _log_attempt(claim, connection_name, result, changes, retry_in)
        self.metrics.attempted(connection_name, result, sent=connection is not None)
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
            log.error("attempt not recorded", delivery_id=delivery.id, error=str(exc))
            return delivery
        if not held:
            log.warning("lease lost; its new holder records the delivery", delivery_id=delivery.id)
        elif changes["state"] != PENDING:
            waited = now - delivery.window_started_at
            self.metrics.finished(connection_name, result, state=changes["state"], waited=waited)
        return replace(delivery, lease_owner=None, lease_expires_at=None, **changes)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._claim_due()
                await self._prune_if_due()
            except StoreUnavailable as exc:
                log.error("store unavailable; retrying at the next poll", error=str(exc))
            except Exception:
                log.exception("dispatcher loop failed; it goes on at the next poll")
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
            self._wake.clear()

    async def _claim_due(self) -> None:
        for name, gate in self.gates.items():
            if gate.needs_probe():
                await gate.probe(self.connections[name])
            if gate.recovered:
                resumed = await self.store.resume(name)  # on StoreUnavailable: next poll
                gate.recovered = False
                log.info(
                    "connection is back; pending deliveries resumed",
                    connection=name,
                    resumed=resumed,
                )
            free = gate.free
            if free <= 0:
                continue
            claims = await self.store.claim_due(
                self.owner, name, free, self.lease, exclude=list(self._tasks)
            )
            self._backlog[name] = len(claims) == free
            self.submit(claims)

    async def _prune_if_due(self) -> None:
        now = time.time()
        if now - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        self._last_prune = now
        removed = await self.store.prune(now - self.retention)
        if removed:
            log.info("finished events past the retention period pruned", removed=removed)


def _log_attempt(
    claim: Claim,
    connection: str,
    result: AttemptResult,
    changes: dict[str, Any],
    retry_in: float | None,
) -> None:
    """One line per attempt: info when delivered, warning when retried, error when dead."""
    state = changes.get("state")
    level = {DELIVERED: logging.INFO, PENDING: logging.WARNING}.get(str(state), logging.ERROR)
    log.log(
        level,
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
        state=state,
        flow_run_id=result.flow_run_id,
        duration_ms=round(result.duration_ms, 1),
        retry_in=round(retry_in, 3) if retry_in is not None else None,
        error=result.error,
    )

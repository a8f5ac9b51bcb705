"""The dispatcher: owns every delivery of this process, from the moment it is stored to
its flow run, its retry or its dead letter.

The webhook hands it a new event (:meth:`Dispatcher.record`) and awaits its deliveries'
outcome (:meth:`Dispatcher.deliver_new`); claims and leases stay in here. New deliveries
are tried at once when their connection has room, due retries come from a polling loop,
and :mod:`app.delivery.gate` admits each request (concurrency, rate, ``Retry-After``,
circuit). Each turn is :mod:`app.delivery.turn`'s plain functions (and, for an emission,
:mod:`app.delivery.readback`'s read-back, outside the connection's slot).
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import replace

import structlog

from app.config import Settings
from app.delivery.client import AttemptResult, Outcome, PrefectConnection
from app.delivery.gate import ConnectionGate, GateClosed
from app.delivery.readback import ReadBack, confirmed, kept_already
from app.delivery.status import EVENT, FLOW_RUN, ConnectionStatus, DeliveryObserver
from app.delivery.turn import (
    RetryPolicy,
    Turn,
    attempt_delivery,
    log_attempt,
    never_in_the_way,
    plan_next,
    turn_of,
    unexpected_failure,
)
from app.errors import StoreUnavailable
from app.routing.prefect_event import is_emission
from app.routing.router import Router
from app.routing.templates import Lookup
from app.storage.history import History
from app.storage.records import (
    AttemptRecord,
    Claim,
    DeliveryRecord,
    DeliveryState,
    NewEvent,
    Recorded,
)
from app.storage.store import Store

log = structlog.get_logger("erathos_prefect_bridge.delivery.dispatcher")

PRUNE_EVERY_SECONDS = 3600.0


class Dispatcher:
    """Owns every delivery task of this process; started and stopped by the app's lifespan."""

    def __init__(
        self,
        store: Store,
        history: History,
        router: Router,
        connections: dict[str, PrefectConnection],
        lookup: Lookup,
        settings: Settings,
        metrics: DeliveryObserver,
    ) -> None:
        self.store = store
        self.history = history
        self.router = router
        self.connections = connections
        self.lookup = lookup
        self.metrics = metrics
        self.policy = RetryPolicy.from_settings(settings)
        self.lease = settings.lease.total_seconds()
        self.poll_interval = settings.poll_interval.total_seconds()
        self.retention = settings.retention.total_seconds()
        self.follow_runs = settings.follow_runs  # off: a run made is marked not followed
        self.owner = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        cap = self.policy.cap
        self.gates = {
            name: ConnectionGate(settings.max_concurrency, settings.max_rate, name, cap)
            for name in connections
        }
        # Emissions count once Prefect is seen to have kept them (app.delivery.readback).
        self.readbacks = {n: ReadBack(connections[n]) for n in router.emit_on if n in connections}
        self._tasks: dict[str, asyncio.Task[Turn]] = {}
        self._wake = asyncio.Event()
        # Whether a connection has deliveries due that no claim has taken yet: only then
        # is another claim worth making the moment a delivery finishes (else: at the next
        # poll), and only while there are none does a new delivery skip the queue.
        # (The loop's first claim, at start, finds out what an earlier run left.)
        self._backlog = dict.fromkeys(connections, False)
        self._loop_task: asyncio.Task[None] | None = None
        self._probes: dict[str, asyncio.Task[None]] = {}  # at most one per connection
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
        for probe in self._probes.values():
            probe.cancel()
        await asyncio.gather(*self._probes.values(), return_exceptions=True)
        if running := dict(self._tasks):
            await self._give_back(running, grace)
        for readback in self.readbacks.values():
            await readback.close()

    async def _give_back(self, running: dict[str, asyncio.Task[Turn]], grace: float) -> None:
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
                why = "leases not released on shutdown; they expire by themselves"
                log.warning(why, error=str(exc))

    # -- new events -------------------------------------------------------------------------

    async def record(self, new: NewEvent) -> Recorded:
        """Store a new event with its deliveries (or find the earlier one with its
        execution id). When every connection has room and nothing older waits, the
        deliveries are born claimed by this process, for :meth:`deliver_new` to send at
        once; otherwise they queue. Raises :class:`StoreUnavailable` if not stored."""
        now = all(self._starts_now(d.connection) for d in new.deliveries)
        recorded = await self.store.record_event(
            new, claim_for=self.owner if now else None, lease_seconds=self.lease
        )
        if recorded.created and not now:
            for delivery in recorded.deliveries:
                if delivery.connection in self._backlog:
                    self._backlog[delivery.connection] = True  # claimed as a slot frees up
        return recorded

    async def deliver_new(self, recorded: Recorded, wait: float) -> list[Turn]:
        """Send the deliveries :meth:`record` made claimed, and wait up to ``wait``
        seconds for their answers; one turn per delivery, in order."""
        mine = [d for d in recorded.deliveries if recorded.created and d.lease_owner == self.owner]
        claims = [Claim(d, recorded.event) for d in mine]
        tasks = {
            claim.delivery.id: task
            for claim, task in zip(claims, self._submit(claims), strict=True)
        }
        if tasks:
            await asyncio.wait(tasks.values(), timeout=wait)
        return [turn_of(tasks.get(d.id), d) for d in recorded.deliveries]

    def wake(self) -> None:
        """Look for due deliveries now (after a replay, say) instead of at the next poll."""
        self._backlog = dict.fromkeys(self._backlog, True)
        self._wake.set()

    def status(self) -> dict[str, ConnectionStatus]:
        """Each connection's admission now: what the console, health and metrics read."""
        return {name: ConnectionStatus.of(name, gate) for name, gate in self.gates.items()}

    def _starts_now(self, connection: str) -> bool:
        gate = self.gates.get(connection)
        if gate is None:
            return False
        # Never ahead of older deliveries still waiting to be claimed: a backlog drains
        # oldest first, and under saturation new events queue behind it.
        return gate.free > 0 and not self._backlog.get(connection, False)

    # -- delivering -------------------------------------------------------------------------

    def _submit(self, claims: Iterable[Claim]) -> list[asyncio.Task[Turn]]:
        """Start delivering claimed deliveries; one task per delivery."""
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

    def _forget(self, task: asyncio.Task[Turn]) -> None:
        delivery_id = task.get_name().removeprefix("delivery-")
        self._tasks.pop(delivery_id, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # What even _deliver could not record (the store's record failing with a bug),
            # logged here, as nobody awaits the claim loop's tasks; its lease runs out.
            with suppress(Exception):
                log.error("delivery turn not recorded", delivery_id=delivery_id, exc_info=exc)
        if any(self._backlog.values()):
            self._wake.set()  # a slot is free and more is due: claim now, not at the next poll

    async def _deliver(self, claim: Claim) -> Turn:
        started = self.store.clock()
        try:
            return await self._take_turn(claim)
        except Exception as exc:
            # Whatever failed (a bug, a library's surprise), the turn ends in a recorded
            # attempt: left unrecorded, the delivery would keep its lease, be sent again
            # each time the lease ran out, and never be dead-lettered.
            with suppress(Exception):
                log.exception("delivery turn failed", delivery_id=claim.delivery.id)
            return await self._record(claim, started, unexpected_failure(exc), None)

    async def _take_turn(self, claim: Claim) -> Turn:
        delivery = claim.delivery
        route = self.router.route(delivery.route)
        name = route.connection if route else delivery.connection
        gate = self.gates.get(name)
        readback = self.readbacks.get(name) if is_emission(delivery.route) else None
        if readback is not None and delivery.attempts > 1:
            # Sent before, maybe kept: read back first, never sent twice for nothing.
            started = self.store.clock()
            if (kept := await kept_already(claim, readback)) is not None:
                return await self._record(claim, started, kept, readback.connection)
        sent = await self._send(claim, gate)
        if sent is None:
            return Turn(delivery)
        started, result, connection = sent
        if readback is not None and result.outcome is Outcome.DELIVERED:
            # Outside the connection's slot: others are sent while Prefect writes this.
            result = await confirmed(claim, result, readback)
            await self._still_ours(delivery)
        return await self._record(claim, started, result, connection)

    async def _send(
        self, claim: Claim, gate: ConnectionGate | None
    ) -> tuple[float, AttemptResult, PrefectConnection | None] | None:
        """The delivery's request, in its turn at the connection's gate (if it still has
        one); None when it was not sent (the lease was lost, or the circuit opened while
        it waited)."""
        delivery = claim.delivery
        if gate is None:
            started = self.store.clock()
            return (started, *await self._attempt(claim))
        gate.load += 1
        try:
            async with gate.slot():
                if not await self._still_ours(delivery):
                    return None
                started = self.store.clock()
                result, connection = await self._attempt(claim)
            if connection is not None:  # else nothing was sent: nothing to learn
                gate.observe(result, paced=not is_emission(delivery.route))
            return started, result, connection
        except GateClosed:
            # Not tried: the connection went down while it waited. Give it back
            # untouched; it is resumed with the others when the connection recovers.
            await self._release_untried(delivery)
            return None
        finally:
            gate.load -= 1

    async def _attempt(self, claim: Claim) -> tuple[AttemptResult, PrefectConnection | None]:
        return await attempt_delivery(claim, self.router, self.connections, self.lookup)

    async def _still_ours(self, delivery: DeliveryRecord) -> bool:
        """After waiting for a turn, renew the lease if half of it is gone, so a slow
        queue never lets another process send the same delivery at the same time."""
        expires = delivery.lease_expires_at or 0.0
        if expires - self.store.clock() > self.lease / 2:
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
    ) -> Turn:
        delivery = claim.delivery
        now = self.store.clock()
        update, retry_in = plan_next(delivery, result, self.policy, now)
        update = replace(update, followed=self.follow_runs)
        if update.flow_run_id is not None and connection is not None:
            update = replace(update, flow_run_url=connection.flow_run_url(update.flow_run_id))
        connection_name = connection.name if connection is not None else delivery.connection
        kind = EVENT if is_emission(delivery.route) else FLOW_RUN
        with never_in_the_way("attempt not logged or counted", delivery.id):
            log_attempt(claim, connection_name, result, update, retry_in)
            self.metrics.attempted(connection_name, kind, result, sent=connection is not None)
        attempt = AttemptRecord(
            id=0,  # given by the store
            delivery_id=delivery.id,
            number=delivery.attempts,
            started_at=started,
            duration_ms=result.duration_ms,
            outcome=result.outcome.value,
            status_code=result.status_code,
            error=result.error,
            response_excerpt=result.response_excerpt,
            retry_in=retry_in,
        )
        try:
            held = await self.store.complete_attempt(attempt, update, self.owner)
        except StoreUnavailable as exc:
            # The lease runs out and the delivery is tried again; Prefect's
            # idempotency key turns that retry into the same flow run.
            log.error("attempt not recorded", delivery_id=delivery.id, error=str(exc))
            return Turn(delivery, result)
        if not held:
            log.warning("lease lost; its new holder records the delivery", delivery_id=delivery.id)
        elif update.state is not DeliveryState.PENDING:
            waited = now - delivery.window_started_at
            with never_in_the_way("finished delivery not counted", delivery.id):
                self.metrics.finished(
                    connection_name, kind, result, state=update.state, waited=waited
                )
        return Turn(update.applied_to(delivery), result)

    # -- the polling loop -------------------------------------------------------------------

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
            self._probe_if_due(name, gate)
            if gate.recovered:
                resumed = await self.store.resume(name)  # on StoreUnavailable: next poll
                gate.recovered = False
                message = "connection is back; pending deliveries resumed"
                log.info(message, connection=name, resumed=resumed)
            free = gate.claimable
            if free <= 0:
                continue
            claims = await self.store.claim_due(
                self.owner, name, free, self.lease, exclude=list(self._tasks)
            )
            self._backlog[name] = len(claims) == free
            self._submit(claims)

    def _probe_if_due(self, name: str, gate: ConnectionGate) -> None:
        """Probe a connection whose circuit is open, in a task beside the claim loop: a
        connection that never answers holds up only its own probe (which has a deadline
        of its own), never the claims of every other connection."""
        if name in self._probes or not gate.needs_probe():
            return
        probe = asyncio.create_task(gate.probe(self.connections[name]), name=f"probe-{name}")
        self._probes[name] = probe
        probe.add_done_callback(lambda _: self._probed(name))

    def _probed(self, name: str) -> None:
        probe = self._probes.pop(name)
        if not probe.cancelled() and (exc := probe.exception()) is not None:
            with suppress(Exception):
                log.error("probe failed", connection=name, exc_info=exc)
        if self.gates[name].admits:
            self._wake.set()  # half-open now: its trial delivery is claimed at once

    async def _prune_if_due(self) -> None:
        now = self.store.clock()
        if now - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        self._last_prune = now
        removed = await self.history.prune(now - self.retention)
        if removed:
            log.info("finished events past the retention period pruned", removed=removed)

"""Following each flow run the service made until its state is final: COMPLETED, FAILED,
CRASHED or CANCELLED, or gone from Prefect; at most BRIDGE_FOLLOW_FOR after its delivery.

One task per connection, beside the dispatcher and never in a delivery's way: each round
it reads whether any run is due (a read: an idle round writes nothing), leases the runs
due for a look (:class:`app.storage.runs.Runs`, as deliveries are leased, so replicas
never ask for one run at once and a dead replica's runs are taken over), asks Prefect
for them in one ``POST /flow_runs/filter`` by ids, reads the events of those that ended
(their freshness) and records what changed. A connection gets at most one such request
per BRIDGE_FOLLOW_INTERVAL (per replica), however many runs are followed: with more than
a batch due, each run is asked for less often, the most overdue first. While the
connection's circuit is open nothing is asked; the runs stay due and are caught up when
it closes. With BRIDGE_FOLLOW_RUNS off no task runs at all. :func:`plan_seen` is the
per-batch work, a plain function.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog
from pydantic import ValidationError

from app.config import Settings
from app.delivery.client import PrefectConnection
from app.delivery.gate import Circuit
from app.delivery.status import ConnectionStatus, RunObserver
from app.errors import StoreUnavailable
from app.routing.event import ErathosEvent
from app.routing.sets import SET_ROUTE_PREFIX
from app.storage.records import FINAL_RUN_STATES, TERMINAL_RUN_STATES, RunState
from app.storage.runs import Followed, Freshness, Origin, Runs, RunSeen
from app.storage.sets import SET_EVENT

log = structlog.get_logger("erathos_prefect_bridge.delivery.follow")

# Runs asked for in one request: Prefect's default largest page (PREFECT_API_DEFAULT_LIMIT).
FOLLOW_BATCH = 200
PRUNE_EVERY_SECONDS = 3600.0
STOP_GRACE = 1.0  # seconds a round in flight may take to finish on shutdown


@dataclass(frozen=True)
class FollowPolicy:
    interval: float  # between two requests to one connection; a run's next look
    follow_for: float  # after its delivery, a run not final is no longer followed
    lease: float  # how long a claim holds its runs

    @classmethod
    def from_settings(cls, settings: Settings) -> FollowPolicy:
        return cls(
            settings.follow_interval.total_seconds(),
            settings.follow_for.total_seconds(),
            settings.lease.total_seconds(),
        )


def plan_seen(
    followed: Sequence[Followed],
    answer: Sequence[Any],
    now: float,
    policy: FollowPolicy,
    origins: Mapping[str, Origin],
) -> list[RunSeen]:
    """What Prefect's answer (its flow runs, a list) says of each run asked for: its state
    and times, when it is asked for next (never, once final or past the follow period),
    and, once it ended, its freshness (when ``origins`` has its event: see
    :func:`ended`). A run not in the answer is gone."""
    by_id = _by_id(answer)
    seen = []
    for run in followed:
        found = by_id.get(run.flow_run_id)
        if found is None:
            seen.append(RunSeen(run.delivery_id, RunState.GONE, due_at=None))
            continue
        state = _seen_state(run, found)
        due_at = None if state in FINAL_RUN_STATES else now + policy.interval
        if due_at is not None and now - run.delivered_at >= policy.follow_for:
            due_at = None  # followed long enough: it stays as last seen
        state_info = found.get("state") if isinstance(found.get("state"), dict) else {}
        # Never without a time: the day's counts by final state read it.
        state_at = (_epoch(state_info.get("timestamp")) if state_info else None) or now
        started, ended_at = _epoch(found.get("start_time")), _epoch(found.get("end_time"))
        freshness = None
        origin = origins.get(run.event_id)
        if state in TERMINAL_RUN_STATES and origin is not None:
            end = ended_at or state_at or now
            freshness = Freshness(
                run.route,
                end,
                from_finish=_minus(end, erathos_finished_at(origin.payload, run.route)),
                from_receipt=max(0.0, end - origin.received_at),
            )
        seen.append(RunSeen(run.delivery_id, state, state_at, started, ended_at, due_at, freshness))
    return seen


def ended(followed: Sequence[Followed], answer: Sequence[Any]) -> list[Followed]:
    """The runs Prefect's answer says ended: only their events are read (for their
    freshness), and only once Prefect has answered."""
    by_id = _by_id(answer)
    return [
        run
        for run in followed
        if (found := by_id.get(run.flow_run_id)) is not None
        and _seen_state(run, found) in TERMINAL_RUN_STATES
    ]


def _by_id(answer: Sequence[Any]) -> dict[str, Mapping[str, Any]]:
    return {str(run.get("id")): run for run in answer if isinstance(run, dict)}


def _seen_state(run: Followed, found: Mapping[str, Any]) -> RunState:
    # A state this release cannot name: the run stays as it was last seen.
    return _state_of(found) or run.run_state or RunState.PENDING


def _state_of(run: Mapping[str, Any]) -> RunState | None:
    state = run.get("state")
    kind = run.get("state_type") or (state.get("type") if isinstance(state, dict) else None)
    try:
        return RunState(str(kind).lower()) if kind else None
    except ValueError:
        return None


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _minus(end: float, start: float | None) -> float | None:
    return None if start is None else max(0.0, end - start)


def erathos_finished_at(payload: Mapping[str, Any], route: str) -> float | None:
    """Erathos's finish time of the load (UTC, to the minute as Erathos sends it), or for
    a set's window (route ``set:<name>``) the latest of its loads' (the data is as fresh
    as its last table); None for a Prefect-shaped request or an event without one. Only
    a set's own event is read as one: a webhook's body may hold any key, "set" too."""
    if route.startswith(SET_ROUTE_PREFIX):
        window = payload.get(SET_EVENT)
        loads = window.get("loads") if isinstance(window, dict) else None
        listed = loads if isinstance(loads, list) else []
        ends = [_epoch(x.get("finished_at")) for x in listed if isinstance(x, dict)]
        return max((end for end in ends if end is not None), default=None)
    try:
        event = ErathosEvent.model_validate(payload)
    except ValidationError:
        return None
    if event.finished_at_date is None or event.finished_at_time is None:
        return None
    moment = datetime.combine(event.finished_at_date, event.finished_at_time, tzinfo=UTC)
    return moment.timestamp()


def answer_class(status: int | None) -> str:
    """The metrics' label of one request: ``2xx``, ``4xx``, ``5xx``, or ``error``."""
    return "error" if status is None else f"{min(max(status // 100, 2), 5)}xx"


class Follower:
    """One task per connection, started and stopped with the dispatcher."""

    def __init__(
        self,
        runs: Runs,
        connections: dict[str, PrefectConnection],
        status: Callable[[], Mapping[str, ConnectionStatus]],
        policy: FollowPolicy,
        observer: RunObserver,
        owner: str,
        retention: float,
    ) -> None:
        self.runs = runs
        self.connections = connections
        self.status = status
        self.policy = policy
        self.observer = observer
        self.owner = owner
        self.retention = retention
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._last_prune = 0.0

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._follow(name), name=f"follow-{name}")
            for name in self.connections
        ]

    async def stop(self) -> None:
        """Stop asking. A round still waiting for Prefect after STOP_GRACE is cancelled:
        its runs' lease runs out and they are asked for again (here or by a replica),
        and the shutdown's budget goes to deliveries, not to a look at a run."""
        self._stop.set()
        if not self._tasks:
            return
        _, late = await asyncio.wait(self._tasks, timeout=STOP_GRACE)
        for task in late:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _follow(self, name: str) -> None:
        while not self._stop.is_set():
            try:
                await self.follow_once(name)
                await self._prune_if_due()
            except StoreUnavailable as exc:
                log.error("store unavailable; following goes on next round", error=str(exc))
            except Exception:
                log.exception("following failed; it goes on next round", connection=name)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.policy.interval)

    async def follow_once(self, name: str) -> list[RunSeen]:
        """One round for one connection: claim the runs due (only once a read found one),
        ask Prefect once, read the events of the runs that ended, record what it said;
        returns what was recorded. Nothing is asked while the circuit is open."""
        status = self.status().get(name)
        if status is not None and status.circuit is not Circuit.CLOSED:
            return []
        if not await self.runs.any_due(name):  # most rounds: a read, and no write at all
            return []
        claimed = await self.runs.claim(self.owner, name, FOLLOW_BATCH, self.policy.lease)
        if not claimed:
            return []
        answer = await self._ask(name, [run.flow_run_id for run in claimed])
        now = self.runs.clock()
        if answer is None:  # Prefect did not answer: asked again next round, if in time
            done = [
                r.delivery_id for r in claimed if now - r.delivered_at >= self.policy.follow_for
            ]
            again = [r.delivery_id for r in claimed if r.delivery_id not in done]
            await self.runs.release(self.owner, again, due_at=now + self.policy.interval)
            await self.runs.release(self.owner, done, due_at=None)  # BRIDGE_FOLLOW_FOR is up
            return []
        try:
            origins = await self.runs.origins([run.event_id for run in ended(claimed, answer)])
        except StoreUnavailable:  # QueryTimedOut too
            # No read connection was free in time (operators' reads held them all): the
            # runs are given back, asked for again next round rather than at the lease's end.
            ids = [run.delivery_id for run in claimed]
            with suppress(StoreUnavailable):
                await self.runs.release(self.owner, ids, due_at=now + self.policy.interval)
            raise
        seen = plan_seen(claimed, answer, now, self.policy, origins)
        recorded = await self.runs.record(self.owner, seen)
        routes = {run.delivery_id: run.route for run in claimed}
        for run in recorded:
            if run.state in FINAL_RUN_STATES:
                fresh = run.freshness
                with suppress(Exception):
                    self.observer.run_finished(
                        routes[run.delivery_id],
                        run.state.value,
                        from_finish=fresh.from_finish if fresh else None,
                        from_receipt=fresh.from_receipt if fresh else None,
                    )
                    failed = run.state in (RunState.FAILED, RunState.CRASHED)
                    (log.warning if failed else log.info)(
                        "flow run followed to its end",
                        delivery_id=run.delivery_id,
                        route=routes[run.delivery_id],
                        state=run.state.value,
                    )
        return recorded

    async def _ask(self, name: str, flow_run_ids: list[str]) -> list[Any] | None:
        """Prefect's flow runs of these ids (one request), or None when it did not answer."""
        body = {"flow_runs": {"id": {"any_": flow_run_ids}}, "limit": len(flow_run_ids)}
        try:
            response = await self.connections[name].post("flow_runs/filter", body)
        except (TimeoutError, httpx.HTTPError) as exc:
            self.observer.follow_asked(name, answer_class(None))
            log.warning("flow runs not read", connection=name, error=type(exc).__name__)
            return None
        self.observer.follow_asked(name, answer_class(response.status_code))
        try:
            found = response.json() if response.is_success else None
        except ValueError:
            found = None
        if not isinstance(found, list):
            log.warning("flow runs not read", connection=name, status=response.status_code)
            return None
        return found

    async def _prune_if_due(self) -> None:
        now = self.runs.clock()
        if now - self._last_prune >= PRUNE_EVERY_SECONDS:
            self._last_prune = now
            await self.runs.prune(now - self.retention)

"""What Prefect says about each connection and each route's target: probed in the
background when the service starts (a warning names whatever is wrong, and events are
still accepted and queued), kept for ``/readyz``, and looked up by ``check``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog

from app.delivery.client import Health, PrefectConnection
from app.routing.router import FlowTarget, Route, Router

log = structlog.get_logger("erathos_prefect_bridge.delivery.probe")

REFRESH_SECONDS = 15.0  # a report older than this is probed again when asked for


class TargetState(StrEnum):
    FOUND = "found"
    UNKNOWN = "unknown"  # Prefect has no such flow or deployment: its deliveries will fail
    NOT_CREATED_YET = "not_created_yet"  # a flow by name: the first delivery creates it
    UNCHECKED = "unchecked"  # the connection or the lookup failed (the detail says how)


@dataclass(frozen=True)
class TargetReport:
    """One route's target as Prefect knows it."""

    route: str
    target: str  # the target's label: "flow 'dbt'", "deployment dbt/prod", ...
    state: TargetState
    detail: str
    id: str | None = None  # the flow's or deployment's id, when found
    found: dict[str, Any] | None = field(default=None, repr=False)  # Prefect's own object


@dataclass(frozen=True)
class ConnectionReport:
    """One connection: whether it answers and accepts the credentials, and its targets."""

    connection: str
    api_url: str
    health: Health
    targets: tuple[TargetReport, ...]

    @property
    def usable(self) -> bool:
        return self.health.reachable and self.health.authorized is True


async def look_up_target(route: Route, connection: PrefectConnection) -> TargetReport:
    """Whether the route's flow or deployment exists (a read: nothing is created)."""
    target = route.target
    if isinstance(target, FlowTarget):
        kind = "flow"
        path = target.name_path if target.name is not None else f"flows/{target.flow_id}"
    else:
        kind = "deployment"
        path = target.name_path if target.name else f"deployments/{target.deployment_id}"
    fetched = await connection.fetch(path)
    if fetched.body is not None:
        found_id = str(fetched.body.get("id"))
        shown = f"flow {fetched.body.get('name')!r}" if kind == "flow" else target.label
        detail = f"{shown} exists ({found_id})"
        return TargetReport(
            route.name, target.label, TargetState.FOUND, detail, found_id, fetched.body
        )
    if fetched.status_code == 404:
        if isinstance(target, FlowTarget) and target.name is not None:
            detail = f"{target.label} does not exist yet: the first delivery creates it"
            return TargetReport(route.name, target.label, TargetState.NOT_CREATED_YET, detail)
        detail = f"{target.label} does not exist"
        return TargetReport(route.name, target.label, TargetState.UNKNOWN, detail)
    detail = f"{kind} lookup: {fetched.error}"
    return TargetReport(route.name, target.label, TargetState.UNCHECKED, detail)


async def probe_connection(
    name: str, connection: PrefectConnection, routes: Iterable[Route]
) -> ConnectionReport:
    """The connection's health, then (when it is usable) every target of its routes."""
    health = await connection.health()
    routes = list(routes)
    if health.reachable and health.authorized is True:
        targets = await asyncio.gather(*(look_up_target(r, connection) for r in routes))
    else:
        why = f"not checked: connection {name!r}: {health.detail}"
        targets = [unchecked(route, why) for route in routes]
    return ConnectionReport(name, connection.api_url, health, tuple(targets))


def unchecked(route: Route, why: str) -> TargetReport:
    return TargetReport(route.name, route.target.label, TargetState.UNCHECKED, why)


class PrefectWatch:
    """Each connection's latest report. At most one probe per connection is in flight,
    shared by whoever asks; the start-up probe logs what it finds."""

    def __init__(self, router: Router, connections: dict[str, PrefectConnection]) -> None:
        self._connections = connections
        self._routes = {
            name: [route for route in router.routes if route.connection == name]
            for name in connections
        }
        self._reports: dict[str, tuple[float, ConnectionReport]] = {}
        self._probes: dict[str, asyncio.Task[ConnectionReport]] = {}
        self._start: asyncio.Task[None] | None = None

    def start(self, skip: Callable[[str], bool] = lambda _: False) -> None:
        """Probe every connection in the background (but those ``skip`` names) and log
        the outcome; nothing waits for it."""
        self._start = asyncio.create_task(self._at_start(skip), name="prefect start-up probe")

    async def close(self) -> None:
        tasks = [*self._probes.values(), *([self._start] if self._start else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def report(self, name: str, *, within: float) -> ConnectionReport:
        """The connection's report, probed again when older than REFRESH_SECONDS. A probe
        that takes longer than ``within`` goes on in the background, and until it ends
        (or for REFRESH_SECONDS) the report says there was no answer in time: a Prefect
        that never answers slows one readiness check in REFRESH_SECONDS, not each."""
        kept = self._reports.get(name)
        if kept is not None and time.monotonic() - kept[0] <= REFRESH_SECONDS:
            return kept[1]
        probe = self._probe(name)
        try:
            return await asyncio.wait_for(asyncio.shield(probe), within)
        except TimeoutError:
            if probe.done() and not probe.cancelled() and probe.exception() is None:
                return probe.result()  # it ended just as the wait did
            health = Health(False, None, f"no answer within {within:.0f} s")
            why = f"not checked: connection {name!r}: {health.detail}"
            targets = tuple(unchecked(route, why) for route in self._routes[name])
            report = ConnectionReport(name, self._connections[name].api_url, health, targets)
            self._reports[name] = (time.monotonic(), report)  # until the probe's own
            return report

    def _probe(self, name: str) -> asyncio.Task[ConnectionReport]:
        task = self._probes.get(name)
        if task is None:
            task = asyncio.create_task(self._run_probe(name), name=f"prefect probe {name}")
            self._probes[name] = task
        return task

    async def _run_probe(self, name: str) -> ConnectionReport:
        try:
            report = await probe_connection(name, self._connections[name], self._routes[name])
            self._reports[name] = (time.monotonic(), report)
            return report
        finally:
            self._probes.pop(name, None)

    async def _at_start(self, skip: Callable[[str], bool]) -> None:
        names = [name for name in self._connections if not skip(name)]
        reports = await asyncio.gather(*(self._probe(n) for n in names), return_exceptions=True)
        for name, report in zip(names, reports, strict=True):
            if isinstance(report, ConnectionReport):
                log_report(report, self._routes[name])
            elif isinstance(report, Exception):
                log.error("prefect start-up probe failed", connection=name, exc_info=report)


def log_report(report: ConnectionReport, routes: Iterable[Route]) -> None:
    """A warning for a connection that is unreachable or refuses the credentials, and for
    each target Prefect does not know; then one info line with every target's id or state."""
    where = {"connection": report.connection, "api_url": report.api_url}
    health = report.health
    if not report.usable:
        if not health.reachable:
            message = "prefect unreachable: events are accepted and queued"
        elif health.authorized is False:
            message = "prefect refuses the credentials: deliveries will fail"
        else:
            message = "prefect connection not usable: deliveries will fail"
        routes_of = [route.name for route in routes]
        log.warning(message, **where, routes=routes_of, detail=health.detail)
        return
    for target in report.targets:
        fields = {**where, "route": target.route, "target": target.target}
        if target.state is TargetState.UNKNOWN:
            log.warning(
                "prefect target unknown: deliveries will fail", **fields, detail=target.detail
            )
        elif target.state is TargetState.UNCHECKED:
            log.warning("prefect target not checked", **fields, detail=target.detail)
        elif target.state is TargetState.NOT_CREATED_YET:
            log.info("prefect flow not created yet: the first delivery creates it", **fields)
    targets = {target.route: target.id or target.state.value for target in report.targets}
    log.info("prefect checked", **where, targets=targets)

"""Routing: which Prefect targets an Erathos event triggers, and the exact request for each.

Without a routes file there is one route, ``default``: the seed template's
behaviour (a FINISHED event creates a flow run of ``PREFECT_FLOW_ID`` named
``erathos_run_<table_name>`` with the execution id as idempotency key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

from app.event import ErathosEvent
from app.prefect import PrefectRequest
from app.rules import Rule, first_failing, parse_rules
from app.settings import Settings
from app.templates import Lookup, Text, compile_text

DEFAULT_ROUTE = "default"
DEFAULT_CONNECTION = "default"


@dataclass(frozen=True)
class Route:
    name: str
    connection: str
    flow_id: UUID
    flow_run_name: Text
    jobs: frozenset[str] = frozenset()
    rules: tuple[Rule, ...] = ()

    def why_not(self, event: ErathosEvent) -> str | None:
        """None when the route wants the event, otherwise the first reason it does not."""
        if self.jobs and str(event.job_id) not in self.jobs:
            return f"job {event.job_id} is not one of the route's jobs"
        failing = first_failing(self.rules, event)
        return None if failing is None else failing.explain_failure(event)

    def flow_run_request(
        self, event: ErathosEvent, idempotency_key: str, lookup: Lookup
    ) -> PrefectRequest:
        """The request that creates this route's flow run for the event."""
        body = {
            "name": self.flow_run_name.render(event, lookup),
            "flow_id": str(self.flow_id),
            "idempotency_key": idempotency_key,
        }
        return PrefectRequest("flow_runs/", body)


@dataclass(frozen=True)
class Decision:
    """What the router made of one event."""

    routes: list[Route] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # route name -> reason
    ignored: str | None = None  # why nothing at all was triggered

    @property
    def reason(self) -> str | None:
        if self.ignored is not None:
            return self.ignored
        if not self.routes:
            return "; ".join(f"{name}: {why}" for name, why in self.skipped.items())
        return None


@dataclass(frozen=True)
class Router:
    routes: tuple[Route, ...]
    jobs: frozenset[str] = frozenset()  # BRIDGE_JOBS: empty means every job

    def decide(self, event: ErathosEvent) -> Decision:
        if self.jobs and str(event.job_id) not in self.jobs:
            return Decision(ignored=f"job {event.job_id} is not in BRIDGE_JOBS")
        decision = Decision()
        for route in self.routes:
            reason = route.why_not(event)
            if reason is None:
                decision.routes.append(route)
            else:
                decision.skipped[route.name] = reason
        return decision

    def route(self, name: str) -> Route | None:
        return next((route for route in self.routes if route.name == name), None)

    def idempotency_key(self, execution_id: str, route: Route) -> str:
        """The plain execution id for a lone route (as the seed sends it); namespaced
        per route when several exist, because Prefect's idempotency is per flow."""
        if len(self.routes) == 1:
            return execution_id
        return f"{execution_id}:{route.name}"


def default_router(settings: Settings, lookup: Lookup) -> Router:
    """The seed's behaviour, from the environment alone."""
    assert settings.prefect_flow_id is not None  # guaranteed by Settings validation
    route = Route(
        name=DEFAULT_ROUTE,
        connection=DEFAULT_CONNECTION,
        flow_id=settings.prefect_flow_id,
        flow_run_name=compile_text(settings.flow_run_name, lookup, where="BRIDGE_FLOW_RUN_NAME"),
        rules=parse_rules([{"variable_name": "STATUS", "operation": "EQUAL", "value": "FINISHED"}]),
    )
    return Router(routes=(route,), jobs=frozenset(_canonical_job(j) for j in settings.jobs))


def _canonical_job(job: str) -> str:
    try:
        return str(UUID(job))
    except ValueError:
        return job

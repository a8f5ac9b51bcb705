"""Routing: which Prefect targets an Erathos event triggers, and the exact request for each.

Without a routes file there is one route, ``default``: the seed template's
behaviour (a FINISHED event creates a flow run of ``PREFECT_FLOW_ID``, or of the flow
``PREFECT_FLOW_NAME``, named ``erathos_run_<table_name>`` with the execution id as
idempotency key). A routes file (:mod:`app.routing.routes_file`) gives many routes, to
deployments, with parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from uuid import UUID

from app.config import Settings
from app.routing.event import ErathosEvent
from app.routing.rules import Rule, first_failing, parse_rules
from app.routing.templates import Lookup, compile_text, render_json

if TYPE_CHECKING:
    from app.routing.sets import TableSet
    from app.storage.sets import SetPlan

DEFAULT_ROUTE = "default"
DEFAULT_CONNECTION = "default"

# The flow run fields a route may template, as Prefect's create endpoints name them.
FLOW_RUN_FIELDS = ("name", "parameters", "tags", "work_queue_name", "job_variables")


@dataclass(frozen=True)
class PrefectRequest:
    """One POST to a Prefect API, relative to the connection's base URL: an object (a
    flow run to create), or a list (``events``: the events to emit)."""

    path: str
    body: dict[str, Any] | list[dict[str, Any]]


@dataclass(frozen=True)
class FlowTarget:
    """A bare flow run (the seed's): Prefect records it, no worker runs it. The flow by
    id, or by name (looked up, or created, when sending)."""

    flow_id: UUID | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        return f"flow {self.name!r}" if self.name is not None else f"flow {self.flow_id}"

    @property
    def name_path(self) -> str:
        assert self.name is not None
        return f"flows/name/{quote(self.name, safe='')}"


@dataclass(frozen=True)
class DeploymentTarget:
    """A deployment, by id or by ``flow-name/deployment-name`` (resolved when sending)."""

    deployment_id: UUID | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        return f"deployment {self.name or self.deployment_id}"

    @property
    def name_path(self) -> str:
        assert self.name is not None
        flow, _, deployment = self.name.partition("/")
        return f"deployments/name/{quote(flow, safe='')}/{quote(deployment, safe='')}"


Target = FlowTarget | DeploymentTarget


@dataclass(frozen=True)
class Route:
    name: str
    connection: str
    target: Target
    flow_run: dict[str, Any]  # compiled templates, keys from FLOW_RUN_FIELDS
    jobs: frozenset[str] = frozenset()
    rules: tuple[Rule, ...] = ()

    def why_not(self, event: ErathosEvent) -> str | None:
        """None when the route wants the event, otherwise the first reason it does not."""
        if self.jobs and str(event.job_id) not in self.jobs:
            return f"job {event.job_id} is not one of the route's jobs"
        failing = first_failing(self.rules, event)
        return None if failing is None else failing.explain_failure(event)

    def flow_run_body(
        self,
        event: ErathosEvent | None,
        idempotency_key: str,
        lookup: Lookup,
        *,
        mask: bool = False,
        window: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The JSON body of the create request (without a target named by name: its id
        is resolved when sending); ``window``: a set's values, for a set's run."""
        body = {
            key: render_json(template, event, lookup, mask=mask, window=window)
            for key, template in self.flow_run.items()
        }
        if isinstance(self.target, FlowTarget) and self.target.flow_id is not None:
            body["flow_id"] = str(self.target.flow_id)
        body["idempotency_key"] = idempotency_key
        return body

    def request(self, body: dict[str, Any], resolved_id: str | None = None) -> PrefectRequest:
        """The create request: ``flow_runs/``, or the deployment's ``create_flow_run``;
        ``resolved_id`` is the id of a target named by name."""
        if isinstance(self.target, FlowTarget):
            if resolved_id is not None:
                body = {**body, "flow_id": resolved_id}
            return PrefectRequest("flow_runs/", body)
        target = resolved_id or str(self.target.deployment_id)
        return PrefectRequest(f"deployments/{target}/create_flow_run", body)


@dataclass(frozen=True)
class SetMatch:
    """A set a load joins, and which of its members the load is (matched once, by the
    router: what the store is then given)."""

    table_set: TableSet
    members: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    """What the router made of one event."""

    routes: list[Route] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # route name -> reason
    ignored: str | None = None  # why nothing at all was triggered
    emit_on: tuple[str, ...] = ()  # the connections the event goes to as a Prefect event
    sets: list[SetMatch] = field(default_factory=list)  # the sets the load joins

    @property
    def reason(self) -> str | None:
        if self.ignored is not None:
            return self.ignored
        if not self.routes and self.sets:
            names = ", ".join(s.table_set.name for s in self.sets)
            return f"no route of its own; it joined the set(s) {names}"
        if not self.routes:
            return "; ".join(f"{name}: {why}" for name, why in self.skipped.items())
        return None


@dataclass(frozen=True)
class Router:
    routes: tuple[Route, ...]
    jobs: frozenset[str] = frozenset()  # BRIDGE_JOBS: empty means every job
    # Prefect's idempotency is per flow: with a routes file, keys are namespaced per
    # route so that two deployments of one flow each get their run.
    namespaced_keys: bool = False
    # The connections every event is also emitted to, as a Prefect event
    # (app.routing.prefect_event):
    # the default one with BRIDGE_PREFECT_EVENTS, a routes file's with "events": true.
    emit_on: tuple[str, ...] = ()
    sets: tuple[TableSet, ...] = ()  # the routes file's sets (app.routing.sets)

    def decide(self, event: ErathosEvent) -> Decision:
        # BRIDGE_JOBS is the operator's list of the jobs the webhook token speaks for:
        # another job's event starts nothing, not even an automation through its event.
        if self.jobs and str(event.job_id) not in self.jobs:
            return Decision(ignored=f"job {event.job_id} is not in BRIDGE_JOBS")
        decision = Decision(emit_on=self.emit_on)
        for route in self.routes:
            reason = route.why_not(event)
            if reason is None:
                decision.routes.append(route)
            else:
                decision.skipped[route.name] = reason
        for table_set in self.sets:
            if members := table_set.joins(event):
                decision.sets.append(SetMatch(table_set, members))
        return decision

    @cached_property
    def set_plans(self) -> dict[str, SetPlan]:
        """Each set as the store needs it, made once per router (not per webhook): what
        a load joining it and the deadlines' timer hand the store."""
        return {s.name: s.plan(self.emit_on) for s in self.sets}

    def route(self, name: str) -> Route | None:
        """A route by name; a set's flow run is route ``set:<name>``."""
        found = next((route for route in self.routes if route.name == name), None)
        if found is None:
            found = next((s.route for s in self.sets if s.route.name == name), None)
        return found

    def table_set(self, name: str) -> TableSet | None:
        return next((s for s in self.sets if s.name == name), None)

    def idempotency_key(self, execution_id: str, route: Route) -> str:
        """The plain execution id for the default route (as the seed sends it);
        ``<execution_id>:<route>`` for the routes of a routes file."""
        return f"{execution_id}:{route.name}" if self.namespaced_keys else execution_id


def default_router(settings: Settings, lookup: Lookup) -> Router:
    """The seed's behaviour, from the environment alone."""
    # One of the two, guaranteed by Settings validation.
    assert (settings.prefect_flow_id is None) != (settings.prefect_flow_name is None)
    route = Route(
        name=DEFAULT_ROUTE,
        connection=DEFAULT_CONNECTION,
        target=FlowTarget(settings.prefect_flow_id, name=settings.prefect_flow_name),
        flow_run={
            "name": compile_text(settings.flow_run_name, lookup, where="BRIDGE_FLOW_RUN_NAME")
        },
        rules=parse_rules([{"variable_name": "STATUS", "operation": "EQUAL", "value": "FINISHED"}]),
    )
    emit_on = (DEFAULT_CONNECTION,) if settings.prefect_events else ()
    return Router(routes=(route,), jobs=frozenset(settings.jobs), emit_on=emit_on)

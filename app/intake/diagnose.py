"""Diagnostics for operators: ``check`` (does every route's target exist in Prefect and
accept the parameters it would get?) and ``simulate`` (what would this event do?)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from app.delivery.client import PrefectConnection
from app.delivery.probe import TargetState, look_up_target
from app.routing.event import ErathosEvent
from app.routing.prefect_event import emission_key, emission_request, emission_route, too_large
from app.routing.router import FlowTarget, Route, Router
from app.routing.rules import first_failing
from app.routing.sets import TableSet, load_of
from app.routing.templates import MASK, Lookup
from app.storage.records import EventRecord

# A representative successful load, used to render each route's parameters for `check`.
SAMPLE_EVENT = ErathosEvent.model_validate(
    {
        "job_id": "00000000-0000-4000-8000-000000000001",
        "connection_id": "00000000-0000-4000-8000-000000000002",
        "connection_name": "sample connection",
        "schema_name": "raw",
        "table_name": "orders",
        "execution_id": "00000000-0000-4000-8000-000000000003",
        "status": "FINISHED",
        "rows": "1520",
        "columns": "12",
        "total_duration": "42",
        "triggered_by": "Erathos Schedule",
        "is_orchestration": "false",
        "force_history": "false",
        "nested_table": "false",
        "finished_at_date": "2026-01-05",
        "finished_at_time": "06:15",
        "finished_at_weekday": "1",
    }
)


@dataclass(frozen=True)
class RouteCheck:
    route: str
    ok: bool
    detail: str


async def check_route(
    route: Route,
    connection: PrefectConnection,
    lookup: Lookup,
    window: dict[str, Any] | None = None,
) -> RouteCheck:
    """The route's target exists (with its id; a flow by name may not exist yet: the first
    delivery creates it), and the parameters rendered from a sample event (for a set's
    run: from ``window``, a sample window) pass the deployment's parameter schema (as
    Prefect checks it with enforce_parameter_schema)."""
    found = await look_up_target(route, connection)
    if found.state is TargetState.NOT_CREATED_YET:
        return RouteCheck(route.name, True, found.detail)
    if found.state is not TargetState.FOUND or found.found is None:
        return RouteCheck(route.name, False, found.detail)
    if isinstance(route.target, FlowTarget):
        return RouteCheck(route.name, True, found.detail)
    if window is not None:
        body = route.flow_run_body(None, "check", lookup, window=window)
    else:
        body = route.flow_run_body(SAMPLE_EVENT, "check", lookup)
    problems = parameter_problems(
        found.found.get("parameter_openapi_schema"), body.get("parameters")
    )
    if problems:
        return RouteCheck(route.name, False, "flow_run.parameters: " + "; ".join(problems))
    return RouteCheck(route.name, True, found.detail)


def parameter_problems(schema: Any, parameters: Any) -> list[str]:
    """Why ``parameters`` would fail the deployment's parameter schema (empty: they pass)."""
    if not isinstance(schema, dict) or not schema:
        return []
    try:
        validator = Draft202012Validator(schema)
        errors = sorted(validator.iter_errors(parameters or {}), key=lambda e: list(e.path))
    except SchemaError as exc:
        return [f"the deployment's parameter schema is invalid: {exc.message}"]
    return [f"{'.'.join(map(str, e.path)) or 'parameters'}: {e.message}" for e in errors]


def simulate(
    event: ErathosEvent, router: Router, connections: dict[str, PrefectConnection], lookup: Lookup
) -> dict[str, Any]:
    """Which routes match the event, which do not and why, the exact requests that would
    be sent (secrets masked), and the Prefect event it would be emitted as, on each
    connection that emits events. Nothing is stored or sent."""
    decision = router.decide(event)
    matched = {route.name for route in decision.routes}
    out: list[dict[str, Any]] = []
    for route in router.routes:
        if route.name not in matched:
            reason = decision.ignored or decision.skipped.get(route.name)
            out.append({"route": route.name, "matches": False, "reason": reason})
            continue
        connection = connections[route.connection]
        key = router.idempotency_key(event.execution_id, route)
        body = route.flow_run_body(event, key, lookup, mask=True)
        if route.target.name is not None:  # resolved when sending
            request = route.request(body, f"<id of {route.target.name}>")
        else:
            request = route.request(body)
        out.append(
            {
                "route": route.name,
                "matches": True,
                "target": route.target.label,
                "request": {
                    "method": "POST",
                    "url": f"{connection.api_url}/{request.path}",
                    "headers": masked_headers(connection),
                    "body": request.body,
                },
            }
        )
    return {
        "execution_id": event.execution_id,
        "ignored": decision.ignored,
        "routes": out,
        "sets": [_set_joined(s, event, decision.ignored) for s in router.sets],
        "prefect_events": [_emission(event, connections[name]) for name in decision.emit_on],
    }


def _set_joined(table_set: TableSet, event: ErathosEvent, ignored: str | None) -> dict[str, Any]:
    """Whether the load would join the set, as which members, and as what load."""
    members = () if ignored is not None else table_set.joins(event)
    if not members:
        failing = first_failing(table_set.rules, event)
        reason = ignored or (failing.explain_failure(event) if failing else "not a member")
        return {"set": table_set.name, "joins": False, "reason": reason}
    return {
        "set": table_set.name,
        "joins": True,
        "members": list(members),
        "window": table_set.window.describe(),
        "load": load_of(event),
    }


def _emission(event: ErathosEvent, connection: PrefectConnection) -> dict[str, Any]:
    """The emission as the dispatcher would send it: from the event as it would be
    stored, received now (its ``occurred`` when Erathos's finished time is missing)."""
    stored = EventRecord(
        id="",
        execution_id=event.execution_id,
        received_at=time.time(),
        job_id=None,
        schema_name=None,
        table_name=None,
        status=None,
        payload=event.model_dump(mode="json"),
        ignored_reason=None,
    )
    request = emission_request(stored, emission_key(event))
    shown: dict[str, Any] = {
        "route": emission_route(connection.name),
        "connection": connection.name,
        "request": {
            "method": "POST",
            "url": f"{connection.api_url}/{request.path}",
            "headers": masked_headers(connection),
            "body": request.body,
        },
    }
    refused = too_large(request)
    if refused is not None:
        shown["refused"] = refused
    return shown


def masked_headers(connection: PrefectConnection) -> dict[str, str]:
    headers = {k.lower(): v for k, v in connection.headers.items() if k.lower() != "authorization"}
    if connection.auth_scheme is not None:
        headers["authorization"] = f"{connection.auth_scheme} {MASK}"
    headers["content-type"] = "application/json"
    return headers

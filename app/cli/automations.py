"""Prefect automations that run a deployment when the service's Erathos events arrive
(docs/events.md, "Automations"): the automation's JSON, and creating it through Prefect's API.

Written in the form that works on Prefect 3.4 and 3.9 alike: matches with a trailing
``*`` only, and every parameter through ``tojson`` and ``__prefect_kind: json``, so that
an integer stays an integer (3.4 renders every template as a string).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Self, TypeVar
from uuid import UUID

import httpx

from app.delivery.client import Fetched, PrefectConnection
from app.routing.event import METADATA
from app.routing.router import DeploymentTarget

Status = Literal["finished", "failed"]
EVENT_NAMES: dict[Status, str] = {
    "finished": "erathos.job.finished",
    "failed": "erathos.job.failed",
}
EVENT_RESOURCES = "erathos.job.*"  # every Erathos job the service emits events for
OCCURRED = "occurred"  # the event's time, beside the Erathos fields a parameter may take
# What a deployment whose parameters are not known gets (given by id and not looked up):
# the example flow's parameters, as examples/routes.json passes them.
DEFAULT_PARAMETERS = (
    "execution_id",
    "table_name",
    "schema_name",
    "rows",
    "status",
    "finished_at_date",
    "finished_at_time",
)
# A debounced automation counts the events of each table on its own (the schema too: two
# schemas may each have an "orders"). Sorted: Prefect keeps them as a set.
PER_TABLE = ("erathos.schema.name", "erathos.table.name")
# Prefect answers 503 for an error its clients may retry (SQLite busy, most often) and 429
# when rate limited: tried again after these waits, as Prefect's own client does. A
# create is tried again only once Prefect is known not to have saved it (see
# create_automation): a 5xx, a timeout or a lost connection may come after it did.
RETRY_WAITS = (0.5, 1.0, 2.0, 4.0)
RETRY_STATUSES = frozenset({429, 503})
T = TypeVar("T")


class AutomationError(Exception):
    """Why the command cannot go on; ``exit_code`` 2 for what the user asked, 1 for what
    Prefect answered."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True)
class When:
    """Which events run the deployment."""

    status: Status = "finished"
    tables: tuple[str, ...] = ()  # none: every table
    schemas: tuple[str, ...] = ()  # none: every schema
    debounce: int | None = None  # seconds: at most one run per table within them

    @property
    def tables_text(self) -> str:
        text = " or ".join(self.tables) if self.tables else "any table"
        return f"{text} in {' or '.join(self.schemas)}" if self.schemas else text


@dataclass(frozen=True)
class Deployment:
    """The deployment an automation runs, and its parameters when Prefect told them."""

    id: str
    name: str | None = None  # flow-name/deployment-name
    parameters: tuple[str, ...] | None = None  # in the flow's order; None: not known
    required: tuple[str, ...] = ()
    defaults: frozenset[str] = frozenset()  # parameters that have a value without us

    @property
    def label(self) -> str:
        return self.name or f"deployment {self.id}"

    @classmethod
    def from_prefect(cls, body: dict[str, Any], name: str | None) -> Self:
        """From Prefect's deployment object: its parameter schema tells the parameters."""
        schema = body.get("parameter_openapi_schema") or {}
        properties = schema.get("properties")
        if not isinstance(properties, dict):  # a deployment made without a schema
            return cls(str(body["id"]), name)
        ordered = sorted(properties.items(), key=lambda item: item[1].get("position", 1e9))
        defaults = set(body.get("parameters") or {})
        defaults |= {p for p, spec in properties.items() if "default" in spec}
        return cls(
            str(body["id"]),
            name,
            tuple(p for p, _ in ordered),
            tuple(schema.get("required") or ()),
            frozenset(defaults),
        )


def parameter_value(source: str) -> dict[str, Any]:
    """A run parameter taken from the event, typed: ``tojson`` makes it JSON text and
    ``__prefect_kind: json`` reads it back (a number stays a number, null stays null).
    ``payload.get``: a field missing from the payload is null, where ``payload.rows``
    would fail the template and Prefect would make no run at all."""
    if source == OCCURRED:
        expression = "event.occurred.isoformat()"
    else:
        expression = f"event.payload.get('{source}')"
    return {
        "__prefect_kind": "json",
        "value": {"__prefect_kind": "jinja", "template": f"{{{{ {expression} | tojson }}}}"},
    }


def parse_parameters(text: str) -> list[tuple[str, str]]:
    """``--parameters``: comma-separated ``NAME=FIELD`` (``FIELD`` alone: ``FIELD=FIELD``),
    each NAME a deployment parameter and FIELD an Erathos field or ``occurred``."""
    pairs = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, equals, source = (s.strip() for s in part.partition("="))
        if not equals:
            source = name
        if not name.isidentifier():
            raise AutomationError(f"{part!r}: {name!r} is not a parameter name", 2)
        if source not in METADATA and source != OCCURRED:
            raise AutomationError(
                f"{part!r}: {source!r} is not an Erathos field (one of "
                f"{', '.join(METADATA)}, or {OCCURRED})",
                2,
            )
        pairs.append((name, source))
    return pairs


def chosen_parameters(
    requested: dict[str, str] | None, deployment: Deployment
) -> tuple[dict[str, str], list[str]]:
    """The run's parameters (deployment parameter -> Erathos field), and notes for the
    user. Without ``requested``: the Erathos fields the deployment takes, or, its
    parameters unknown, DEFAULT_PARAMETERS."""
    notes = []
    if requested is not None:
        mapping = requested
        known = deployment.parameters
        unknown = [] if known is None else [p for p in mapping if p not in known]
        if unknown:
            takes = ", ".join(deployment.parameters or ()) or "none"
            raise AutomationError(
                f"{deployment.label} has no parameter {', '.join(unknown)} (it takes: {takes})",
                2,
            )
    elif deployment.parameters is None:
        mapping = {field: field for field in DEFAULT_PARAMETERS}
        notes.append(
            f"the parameters of {deployment.label} are not known here: the automation passes "
            f"{', '.join(mapping)} (the example flow's); --parameters chooses others"
        )
    else:
        mapping = {p: p for p in deployment.parameters if p in METADATA}
        if not mapping:
            notes.append(
                f"{deployment.label} takes no parameter named as an Erathos field: its runs "
                "get its defaults (--parameters NAME=FIELD passes fields)"
            )
    missing = [p for p in deployment.required if p not in mapping and p not in deployment.defaults]
    if missing:
        notes.append(
            f"{deployment.label} requires {', '.join(missing)}, which the automation does not "
            "pass: Prefect will refuse to make its runs (--parameters NAME=FIELD passes it)"
        )
    return mapping, notes


def automation_body(
    deployment: Deployment,
    when: When,
    parameters: dict[str, str],
    name: str | None = None,
) -> dict[str, Any]:
    """The JSON of ``POST {api}/automations/``."""
    event = EVENT_NAMES[when.status]
    match: dict[str, str | list[str]] = {"prefect.resource.id": EVENT_RESOURCES}
    for label, values in (
        ("erathos.schema.name", when.schemas),
        ("erathos.table.name", when.tables),
    ):
        if values:
            match[label] = values[0] if len(values) == 1 else list(values)
    summary = f"{when.tables_text} {when.status}"
    at_most = ""
    if when.debounce:
        at_most = f", at most once per table in {when.debounce} s"
    return {
        "name": name or f"erathos: {summary} -> {deployment.label}{at_most}",
        "description": (
            f"Runs {deployment.label} on the event {event} of {when.tables_text}{at_most}, "
            "which erathos-prefect-bridge emits for each Erathos load. "
            "Made by: erathos-prefect-bridge automation."
        ),
        "enabled": True,
        "trigger": {
            "type": "event",
            "posture": "Reactive",
            "match": match,
            "match_related": {},
            "after": [],
            "expect": [event],
            "for_each": list(PER_TABLE) if when.debounce else [],
            "threshold": 1,
            "within": when.debounce or 0,
        },
        "actions": [
            {
                "type": "run-deployment",
                "source": "selected",
                "deployment_id": deployment.id,
                "parameters": {p: parameter_value(source) for p, source in parameters.items()},
                "job_variables": {},
            }
        ],
        "actions_on_trigger": [],
        "actions_on_resolve": [],
    }


async def find_deployment(
    connection: PrefectConnection, name: str | None, deployment_id: UUID | None
) -> Deployment:
    """The deployment by name (``deployments/name/<flow>/<deployment>``) or by id, with
    its parameters; an id given beside a name must be that deployment's."""
    if name is not None:
        path = DeploymentTarget(name=name).name_path
    else:
        path = f"deployments/{deployment_id}"
    what = name or f"deployment {deployment_id}"
    fetched = await _fetch(connection, path)
    if fetched.body is None:
        if fetched.status_code == 404:
            raise AutomationError(f"Prefect at {connection.api_url} has no {what}")
        raise AutomationError(f"looking up {what} at {connection.api_url}: {fetched.error}")
    found = Deployment.from_prefect(fetched.body, name)
    if deployment_id is not None and found.id != str(deployment_id):
        raise AutomationError(f"{name} is deployment {found.id}, not {deployment_id}", 2)
    if name is None:
        flow = await _fetch(connection, f"flows/{fetched.body.get('flow_id')}")
        if flow.body is not None:
            found = Deployment.from_prefect(
                fetched.body, f"{flow.body.get('name')}/{fetched.body.get('name')}"
            )
    return found


async def automations_running(connection: PrefectConnection, deployment_id: str) -> dict[str, str]:
    """The automations Prefect relates to the deployment (those that run it): name -> id."""
    what = f"listing the automations of deployment {deployment_id}"
    path = f"automations/related-to/prefect.deployment.{deployment_id}"
    try:
        response = await _retried(
            lambda: connection.get(path), lambda r: r.status_code in RETRY_STATUSES
        )
    except (TimeoutError, httpx.HTTPError) as exc:
        raise AutomationError(f"{what}: {type(exc).__name__}: {exc}") from None
    try:
        found = response.json() if response.is_success else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        found = None
    if not isinstance(found, list):
        raise AutomationError(f"{what}: HTTP {response.status_code}")
    return {str(a.get("name")): str(a.get("id")) for a in found if isinstance(a, dict)}


async def create_automation(
    connection: PrefectConnection, body: dict[str, Any], deployment_id: str
) -> str:
    """``POST automations/`` (with the slash); the new automation's id.

    An answer that leaves it unknown whether Prefect saved the automation (a 5xx, a
    timeout, a lost connection: a proxy may answer 503 after Prefect saved it) is
    followed by a look for it by its name among the deployment's automations (the
    caller made sure none had that name): found, it is the one; not found, it is sent
    again after the next of RETRY_WAITS. A 429 is sent again as it is."""
    name = str(body["name"])
    waits = iter(RETRY_WAITS)
    while True:
        created = await connection.fetch("automations/", post=body)
        if created.body is not None:
            if not created.body.get("id"):
                raise AutomationError("creating the automation: Prefect answered no id")
            return str(created.body["id"])
        status = created.status_code
        if status is None or status >= 500:
            existing = await automations_running(connection, deployment_id)
            if name in existing:
                return existing[name]
        elif status not in RETRY_STATUSES:
            raise AutomationError(f"creating the automation: {created.error}")
        wait = next(waits, None)
        if wait is None:
            raise AutomationError(f"creating the automation: {created.error}")
        await asyncio.sleep(wait)


async def _fetch(connection: PrefectConnection, path: str) -> Fetched:
    return await _retried(lambda: connection.fetch(path), lambda f: f.status_code in RETRY_STATUSES)


async def _retried(request: Callable[[], Awaitable[T]], again: Callable[[T], bool]) -> T:
    """The request's outcome, asked again after each of RETRY_WAITS while ``again``."""
    for wait in RETRY_WAITS:
        outcome = await request()
        if not again(outcome):
            return outcome
        await asyncio.sleep(wait)
    return await request()

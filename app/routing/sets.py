"""Sets of tables (the routes file's ``sets``): one flow run when every member of a set
has loaded in a window, or when the window's deadline passes first (``when_late``).

This module reads and checks a set (a mistake names the set and the field, as a route's
do), says which members a load is, and builds what the store needs
(:class:`app.storage.sets.SetPlan`) and the requests a window's event becomes: the set's
flow run, from its ``${{set.*}}`` templates, and the Prefect events
``erathos.set.completed`` and ``erathos.set.late``. docs/routes.md ("Sets") is the
reference; its format is public interface, like the routes'.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from datetime import time as clock_time
from typing import Any, Literal
from uuid import UUID, uuid5
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from app.config.values import parse_duration
from app.routing.event import ErathosEvent
from app.routing.prefect_event import (
    EVENTS_PATH,
    NAMESPACE,
    emission_route,
    id_of_key,
    prefect_event,
)
from app.routing.router import PrefectRequest, Route, SetMatch
from app.routing.rules import Rule, first_failing, parse_rules
from app.routing.targets import NAME, NAME_RULE, Strict, TargetModel
from app.routing.templates import Lookup
from app.routing.windows import Daily, Window, Within
from app.storage.records import EventRecord, NewDelivery
from app.storage.sets import SET_EVENT, SetJoin, SetPlan

SET_ROUTE_PREFIX = "set:"  # a set's flow run delivery: route ``set:<name>`` (no route has a colon)
COMPLETED_EVENT, LATE_EVENT = "erathos.set.completed", "erathos.set.late"
_JOB = "job:"
DEFAULT_RULES = [{"variable_name": "STATUS", "operation": "EQUAL", "value": "FINISHED"}]
DEFAULT_RUN_NAME = "erathos_set_${{set.name}}_${{set.window}}"


class SetWindowModel(Strict):
    within: str | None = None  # "2h": from the first member's load
    every: Literal["day"] | None = None  # with a deadline in a time zone
    deadline: str | None = None  # "07:00"
    timezone: str | None = None  # IANA name; UTC when not given

    @field_validator("within")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parsed = parse_duration(value)
            if isinstance(parsed, str) or parsed.total_seconds() <= 0:
                raise ValueError("must be a duration longer than 0 s: 90s, 30m, 2h, 1d")
        return value

    @field_validator("deadline")
    @classmethod
    def _clock(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                clock_time.fromisoformat(value)
            except ValueError:
                raise ValueError("must be a time of day, HH:MM (07:00)") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError("must be an IANA time zone (America/Sao_Paulo, UTC)") from None
        return value

    def compiled(self, where: str) -> Window:
        if (self.within is None) == (self.every is None):
            raise ValueError(f'{where}: give "within" (2h), or "every": "day" with a deadline')
        if self.within is not None:
            if self.deadline is not None or self.timezone is not None:
                raise ValueError(f"{where}: a within window has no deadline or timezone")
            return Within(parse_duration(self.within).total_seconds())
        if self.deadline is None:
            raise ValueError(f'{where}.deadline: "every": "day" needs one (07:00)')
        return Daily(clock_time.fromisoformat(self.deadline), self.timezone or "UTC")


class SetModel(TargetModel):
    name: str
    members: list[str] = Field(min_length=1)
    rules: list[Any] | None = None  # which loads count: FINISHED ones by default
    window: SetWindowModel
    when_late: Literal["run", "skip"] = "run"

    @field_validator("name")
    @classmethod
    def _set_name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(NAME_RULE)
        return value

    @field_validator("members")
    @classmethod
    def _members(cls, value: list[str]) -> list[str]:
        for index, member in enumerate(value):
            Member.parse(member, where=f"[{index}]")
        if len(set(value)) != len(value):
            raise ValueError("a member is listed twice")
        return value


@dataclass(frozen=True)
class Member:
    """A member as written: ``schema.table``, ``table`` (any schema) or ``job:<uuid>``
    (one Erathos job, whatever its table). Names compare case-insensitively."""

    text: str
    schema: str | None = None
    table: str | None = None
    job: str | None = None

    @classmethod
    def parse(cls, text: str, *, where: str = "member") -> Member:
        written = text.strip()
        if written.lower().startswith(_JOB):
            try:
                return cls(text, job=str(UUID(written[len(_JOB) :])))
            except ValueError:
                raise ValueError(
                    f"{where}: {text!r}: a job member is job:<Erathos job id>"
                ) from None
        schema, dot, table = written.rpartition(".")
        if not table or (dot and not schema):
            raise ValueError(f"{where}: {text!r}: write schema.table, table or job:<job id>")
        return cls(text, schema=schema.lower() if dot else None, table=table.lower())

    def matches(self, event: ErathosEvent) -> bool:
        if self.job is not None:
            return event.job_id is not None and str(event.job_id) == self.job
        if (event.table_name or "").lower() != self.table:
            return False
        return self.schema is None or (event.schema_name or "").lower() == self.schema


@dataclass(frozen=True)
class TableSet:
    """A compiled set: its members, the loads that count, its window, and its flow run
    (a route named ``set:<name>``, whose templates name ``${{set.*}}``)."""

    name: str
    members: tuple[Member, ...]
    rules: tuple[Rule, ...]
    window: Window
    when_late: Literal["run", "skip"]
    route: Route

    def joins(self, event: ErathosEvent) -> tuple[str, ...]:
        """The members the load is (none when the set's rules refuse it)."""
        if first_failing(self.rules, event) is not None:
            return ()
        return tuple(m.text for m in self.members if m.matches(event))

    def plan(self, emit_on: tuple[str, ...]) -> SetPlan:
        def made(window: str, late: bool, run: bool) -> list[NewDelivery]:
            runs = [NewDelivery(self.route.name, self.route.connection, run_key(self.name, window))]
            key = str(event_uuid(self.name, window, late))
            emissions = [NewDelivery(emission_route(name), name, key) for name in emit_on]
            return [*(runs if run else []), *emissions]

        members = tuple(m.text for m in self.members)
        return SetPlan(self.name, members, self.window, self.when_late == "run", made)


def run_key(name: str, window: str) -> str:
    """The idempotency key of a window's flow run: one window, one run."""
    return f"{SET_ROUTE_PREFIX}{name}:{window}"


def event_uuid(name: str, window: str, late: bool) -> UUID:
    return uuid5(
        NAMESPACE, f"{SET_EVENT}/{name}/{window}/{LATE_EVENT if late else COMPLETED_EVENT}"
    )


def members_of(sets: Iterable[TableSet]) -> dict[str, tuple[str, ...]]:
    """Each set's members as written: what the API, the console and the CLI show."""
    return {s.name: tuple(m.text for m in s.members) for s in sets}


def compile_set(spec: SetModel, index: int, lookup: Lookup, connection: str) -> TableSet:
    """A set of the routes file, compiled; ValueError (RuleError, TemplateError) names the
    set and the field."""
    where = f"sets[{index}] ({spec.name})"
    target = spec.target(where)
    flow_run = spec.compiled_flow_run(lookup, where, DEFAULT_RUN_NAME, of_set=True)
    raw_rules = DEFAULT_RULES if spec.rules is None else spec.rules
    return TableSet(
        name=spec.name,
        members=tuple(Member.parse(m) for m in spec.members),
        rules=parse_rules(raw_rules, where=f"{where}.rules"),
        window=spec.window.compiled(f"{where}.window"),
        when_late=spec.when_late,
        route=Route(f"{SET_ROUTE_PREFIX}{spec.name}", connection, target, flow_run),
    )


def joining(
    matches: Sequence[SetMatch], plans: Mapping[str, SetPlan], event: ErathosEvent
) -> list[SetJoin]:
    """The sets a load joins, as the router matched them (``plans``: the router's
    :attr:`~app.routing.router.Router.set_plans`), each with the members it is, and the
    load as ``${{set.loads}}`` lists it."""
    if not matches:
        return []
    load = load_of(event)
    return [SetJoin(plans[m.table_set.name], m.members, load) for m in matches]


def load_of(event: ErathosEvent) -> dict[str, Any]:
    """One load in ``${{set.loads}}``: typed (``rows`` an integer, ``force_history`` a
    boolean), ``finished_at`` ISO 8601 in UTC from Erathos's date and time."""
    finished_at = None
    if event.finished_at_date is not None and event.finished_at_time is not None:
        when = datetime.combine(event.finished_at_date, event.finished_at_time, tzinfo=UTC)
        finished_at = when.isoformat().replace("+00:00", "Z")
    return {
        "execution_id": event.execution_id,
        "job_id": str(event.job_id) if event.job_id is not None else None,
        "schema_name": event.schema_name,
        "table_name": event.table_name,
        "rows": event.rows,
        "status": event.status,
        "force_history": event.force_history,
        "finished_at": finished_at,
    }


def sample_window(table_set: TableSet, sample: ErathosEvent) -> dict[str, Any]:
    """The values a window of the set would have with every member loaded as ``sample``
    (``check`` renders the set's parameters from them)."""
    loads = []
    for member in table_set.members:
        named = {"table_name": member.table, "schema_name": member.schema or sample.schema_name}
        changed = {"job_id": UUID(member.job)} if member.job is not None else named
        loads.append({"member": member.text, **load_of(sample.model_copy(update=changed))})
    window = "2026-01-05" if isinstance(table_set.window, Daily) else "2026-01-05T06:15:00.000Z"
    return {"name": table_set.name, "window": window, "late": False, "loads": loads, "missing": []}


def window_values(stored: EventRecord) -> dict[str, Any] | None:
    """The set's values a window's event carries (``${{set.*}}``), or None for another event."""
    values = (
        stored.payload.get(SET_EVENT) if stored.execution_id.startswith(SET_EVENT + "/") else None
    )
    return values if isinstance(values, dict) else None


def emitted_event(stored: EventRecord, key: str | None = None) -> dict[str, Any]:
    """The Prefect event a stored event's emission sends: a window's, or a load's
    (:func:`app.routing.prefect_event.prefect_event`)."""
    values = window_values(stored)
    if values is None:
        return prefect_event(stored, key)
    return set_prefect_event(
        values, stored, key or str(event_uuid(values["name"], values["window"], values["late"]))
    )


def emission_request_of(stored: EventRecord, key: str | None = None) -> PrefectRequest:
    """``POST {api}/events`` with the one event a stored event's emission sends."""
    return PrefectRequest(EVENTS_PATH, [emitted_event(stored, key)])


def set_prefect_event(values: dict[str, Any], stored: EventRecord, key: str) -> dict[str, Any]:
    """``erathos.set.completed`` or ``erathos.set.late``, as a Prefect event; ``occurred``
    never ahead of the clock (Prefect's triggers skip an event from the future)."""
    name, window, late = str(values["name"]), str(values["window"]), bool(values["late"])
    resource = {
        "prefect.resource.id": f"erathos.set.{name}",
        "prefect.resource.name": name,
        "erathos.set.name": name,
        "erathos.set.window": window,
    }
    related = [
        {
            "prefect.resource.id": f"erathos.execution.{load['execution_id']}",
            "prefect.resource.role": "load",
            "prefect.resource.name": str(load.get("member")),
        }
        for load in values.get("loads", [])[:100]
    ]
    when = min(stored.received_at, time.time())
    occurred = datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")
    payload = {k: values.get(k) for k in ("name", "window", "late", "run", "loads", "missing")}
    return {
        "id": id_of_key(key),
        "occurred": occurred,
        "event": LATE_EVENT if late else COMPLETED_EVENT,
        "resource": resource,
        "related": related,
        "payload": payload,
    }

"""The routes file (``BRIDGE_ROUTES_FILE``): named Prefect connections and the routes
that send Erathos events to flows and deployments. Its format is public interface:
names may grow, never change.

Everything is checked when the service starts; a mistake stops it with a message
that names the route and the field (``routes[0] (orders-to-dbt).rules[1].operation:
...``). Credentials are never written inline: ``api_key`` and ``auth_string`` must
be ``${{secrets.NAME}}`` placeholders.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import (
    Field,
    SecretStr,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from app.config import (
    PREFECT_API_VERSION,
    PREFECT_CLOUD_API,
    ConfigurationError,
    PrefectSettings,
    Settings,
)
from app.config.values import normalise_api_url
from app.routing.router import (
    DEFAULT_CONNECTION,
    Route,
    Router,
)
from app.routing.rules import RuleError, parse_rules, to_erathos
from app.routing.sets import DEFAULT_RULES, SetModel, TableSet, compile_set
from app.routing.targets import NAME, NAME_RULE, Strict, TargetModel
from app.routing.templates import Lookup, TemplateError, compile_text
from app.storage.records import DROP_IN_ROUTE, PREFECT_EVENT_ROUTE

_SECRET_ONLY = re.compile(r"^\s*\$\{\{\s*secrets\.[A-Za-z_][A-Za-z0-9_]*\s*\}\}\s*$")


@dataclass(frozen=True)
class ConnectionSpec:
    """How to reach and authenticate to one Prefect API."""

    name: str
    api_url: str
    api_key: SecretStr | None = None
    auth_string: SecretStr | None = None
    api_version: str = PREFECT_API_VERSION
    ui_url: str | None = None  # the UI's address for flow run links, when not the API's
    events: bool = False  # every Erathos event is also emitted here as a Prefect event


# A route's flow run name when the routes file gives none.
DEFAULT_RUN_NAME = "erathos_run_${{erathos.table_name}}"


class ConnectionModel(Strict):
    api_url: str | None = None
    account_id: str | None = None
    workspace_id: str | None = None
    api_key: str | None = None
    auth_string: str | None = None
    api_version: str | None = None
    events: StrictBool = False  # every Erathos event also emitted here as a Prefect event

    @field_validator("api_key", "auth_string")
    @classmethod
    def _secret_placeholder(cls, value: str | None) -> str | None:
        if value is not None and not _SECRET_ONLY.match(value):
            raise ValueError(
                "credentials are never written inline: use a ${{secrets.NAME}} placeholder "
                "and set NAME in the environment or the secrets directory"
            )
        return value


class RouteModel(TargetModel):
    name: str
    jobs: list[UUID] = Field(default_factory=list)
    rules: list[Any] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _route_name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(NAME_RULE)
        if value == DROP_IN_ROUTE:
            raise ValueError(f"{DROP_IN_ROUTE!r} is reserved for the Prefect-shaped endpoints")
        if value == PREFECT_EVENT_ROUTE:
            raise ValueError(f"{PREFECT_EVENT_ROUTE!r} is reserved for the Prefect events")
        return value


class RoutesFileModel(Strict):
    connections: dict[str, ConnectionModel] = Field(default_factory=dict)
    routes: list[RouteModel] = Field(default_factory=list)
    sets: list[SetModel] = Field(default_factory=list)  # app.routing.sets

    @model_validator(mode="after")
    def _something_to_do(self) -> RoutesFileModel:
        if not self.routes and not self.sets:
            raise ValueError("routes: give at least one route (or a set)")
        return self


@dataclass(frozen=True)
class Routing:
    """What the service routes with: the router and every connection it needs."""

    router: Router
    connections: dict[str, ConnectionSpec]


def default_connection_spec(settings: PrefectSettings) -> ConnectionSpec | None:
    """The connection the environment describes (PREFECT_API_URL or the Cloud ids)."""
    if settings.api_url is None:
        return None
    return ConnectionSpec(
        DEFAULT_CONNECTION,
        settings.api_url,
        api_key=settings.prefect_api_key,
        auth_string=settings.prefect_api_auth_string,
        api_version=settings.prefect_api_version,
        ui_url=settings.prefect_ui_url,
        events=settings.prefect_events,
    )


def read_routes_file(path: Path) -> RoutesFileModel:
    """Parse and validate a routes file's shape, or raise one ConfigurationError."""
    where = "BRIDGE_ROUTES_FILE"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"{where}: cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"{where}: {path} is not valid JSON: {exc}") from None
    try:
        return RoutesFileModel.model_validate(raw)
    except ValidationError as exc:
        raise ConfigurationError(f"{where}: {_field_errors(exc, raw)}") from None


def erathos_filters(model: RoutesFileModel) -> tuple[list[str], list[dict[str, Any]]]:
    """The jobs and rules Erathos can apply itself so it skips calls no route wants:
    the union of the routes' jobs (when every route names some) and the rules that
    every route has (Erathos rules can only be ANDed)."""
    jobs: list[str] = []
    if not model.sets and all(route.jobs for route in model.routes):
        jobs = sorted({str(job) for route in model.routes for job in route.jobs})
    try:
        parsed = [parse_rules(route.rules) for route in model.routes]
        parsed += [parse_rules(DEFAULT_RULES if s.rules is None else s.rules) for s in model.sets]
    except RuleError as exc:
        raise ConfigurationError(f"BRIDGE_ROUTES_FILE: {exc}") from None
    common = [rule for rule in parsed[0] if all(rule in rules for rules in parsed[1:])]
    return jobs, [to_erathos(rule) for rule in common]


def load_routes_file(path: Path, settings: Settings, lookup: Lookup) -> Routing:
    """Read, validate and compile a routes file, or raise one ConfigurationError."""
    where = "BRIDGE_ROUTES_FILE"
    model = read_routes_file(path)
    try:
        return _compile(model, settings, lookup)
    except (RuleError, TemplateError, ValueError) as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


def _compile(model: RoutesFileModel, settings: Settings, lookup: Lookup) -> Routing:
    connections: dict[str, ConnectionSpec] = {}
    default = default_connection_spec(settings)
    if default is not None:
        connections[DEFAULT_CONNECTION] = default
    for name, connection_model in model.connections.items():
        if name == DEFAULT_CONNECTION:
            raise ValueError(
                "connections.default: 'default' is the connection of the environment "
                "(PREFECT_API_URL); name this one differently"
            )
        connections[name] = _connection(name, connection_model, lookup, settings)
    routes = []
    seen: set[str] = set()
    for index, spec in enumerate(model.routes):
        where = f"routes[{index}] ({spec.name})"
        if spec.name in seen:
            raise ValueError(f"{where}.name: another route has this name")
        seen.add(spec.name)
        connection = spec.connection or DEFAULT_CONNECTION
        if connection not in connections:
            if connection == DEFAULT_CONNECTION:
                raise ValueError(
                    f"{where}.connection: none given and the environment has no PREFECT_API_URL"
                )
            raise ValueError(
                f"{where}.connection: {connection!r} is not one of the connections "
                f"({', '.join(sorted(model.connections)) or 'none defined'})"
            )
        routes.append(
            Route(
                name=spec.name,
                connection=connection,
                target=spec.target(where),
                flow_run=spec.compiled_flow_run(lookup, where, DEFAULT_RUN_NAME),
                jobs=frozenset(str(job) for job in spec.jobs),
                rules=parse_rules(spec.rules, where=f"{where}.rules"),
            )
        )
    sets: list[TableSet] = []
    for index, set_spec in enumerate(model.sets):
        where = f"sets[{index}] ({set_spec.name})"
        if set_spec.name in {s.name for s in sets}:
            raise ValueError(f"{where}.name: another set has this name")
        connection = set_spec.connection or DEFAULT_CONNECTION
        if connection not in connections:
            raise ValueError(f"{where}.connection: {connection!r} is not one of the connections")
        sets.append(compile_set(set_spec, index, lookup, connection))
    router = Router(
        routes=tuple(routes),
        jobs=frozenset(settings.jobs),
        namespaced_keys=True,
        emit_on=tuple(name for name, spec in connections.items() if spec.events),
        sets=tuple(sets),
    )
    return Routing(router, connections)


def _connection(
    name: str, spec: ConnectionModel, lookup: Lookup, settings: Settings
) -> ConnectionSpec:
    where = f"connections.{name}"

    def text(field: str, value: str | None) -> str | None:
        if value is None:
            return None
        return compile_text(value, lookup, where=f"{where}.{field}").render(None, lookup)

    api_url = text("api_url", spec.api_url)
    account = text("account_id", spec.account_id)
    workspace = text("workspace_id", spec.workspace_id)
    if api_url is None:
        if not (account and workspace):
            raise ValueError(
                f"{where}: give api_url, or account_id and workspace_id (Prefect Cloud)"
            )
        api_url = f"{PREFECT_CLOUD_API}/accounts/{account}/workspaces/{workspace}"
    try:
        api_url = normalise_api_url(api_url, credentials="auth_string")
    except ValueError as exc:
        raise ValueError(f"{where}.api_url: {exc}") from None
    if spec.api_key is not None and spec.auth_string is not None:
        raise ValueError(f"{where}: give api_key (Prefect Cloud) or auth_string (Basic), not both")
    return ConnectionSpec(
        name,
        api_url,
        api_key=_secret(spec.api_key, lookup, f"{where}.api_key"),
        auth_string=_secret(spec.auth_string, lookup, f"{where}.auth_string"),
        api_version=text("api_version", spec.api_version) or settings.prefect_api_version,
        events=spec.events,
    )


def _secret(value: str | None, lookup: Lookup, where: str) -> SecretStr | None:
    if value is None:
        return None
    rendered = compile_text(value, lookup, where=where).render(None, lookup)
    return SecretStr(rendered)


def _field_errors(exc: ValidationError, raw: Any) -> str:
    """Name each invalid field with its route: ``routes[0] (orders).deployment: ...``."""
    messages = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = list(error["loc"])
        path = ""
        for position, part in enumerate(loc):
            if isinstance(part, int):
                path += f"[{part}]"
                if loc[:position] in (["routes"], ["sets"]):
                    name = _route_name(raw, str(loc[0]), part)
                    path += f" ({name})" if name else ""
            else:
                path += f".{part}" if path else str(part)
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "is not a known field (check its spelling)"
        messages.append(f"{path or 'file'}: {message}")
    return "; ".join(messages)


def _route_name(raw: Any, kind: str, index: int) -> str | None:
    try:
        name = raw[kind][index]["name"]
    except (KeyError, IndexError, TypeError):
        return None
    return name if isinstance(name, str) else None

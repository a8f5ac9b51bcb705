"""Erathos placeholders: ``${{variables.NAME}}``, ``${{secrets.NAME}}``, ``${{erathos.NAME}}``,
and in a set's flow run ``${{set.NAME}}`` (:mod:`app.routing.sets`) instead of ``erathos``.

Templates are compiled once, at start-up, so an unknown name stops the service
instead of failing an event later. Rendering is a single pass over the compiled
parts: a value that came from an event is inserted as data and never scanned
again, so a ``${{secrets.x}}`` inside an incoming field stays literal text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, time
from typing import Any
from uuid import UUID

from pydantic import SecretStr

from app.config import Settings
from app.routing.event import METADATA, ErathosEvent, format_value

PLACEHOLDER = re.compile(r"\$\{\{\s*([A-Za-z_]+)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
NAMESPACES = ("variables", "secrets", "erathos")
# What a set's flow run may name (``${{set.loads}}``...): the values of the window it runs.
SET_FIELDS = frozenset({"name", "window", "loads", "missing", "late"})
MASK = "********"


class TemplateError(ValueError):
    """A template names something that does not exist; the message says where."""


@dataclass(frozen=True)
class Lookup:
    """What ``variables.*`` and ``secrets.*`` resolve to (names are case-insensitive)."""

    variables: Mapping[str, str] = field(repr=False)
    secrets: Mapping[str, SecretStr] = field(repr=False)

    def variable(self, name: str) -> str | None:
        return self.variables.get(name.upper())

    def secret(self, name: str) -> SecretStr | None:
        return self.secrets.get(name.upper())


@dataclass(frozen=True)
class _Ref:
    namespace: str  # "erathos", "set" or "secrets": variables are resolved when compiling
    name: str


@dataclass(frozen=True)
class Template:
    """A compiled template string: literal parts and references, in order."""

    parts: tuple[str | _Ref, ...]

    @property
    def is_literal(self) -> bool:
        return all(isinstance(part, str) for part in self.parts)

    @property
    def single_metadata(self) -> str | None:
        """The metadata name when the string is exactly one ``${{erathos.x}}``."""
        if len(self.parts) == 1 and isinstance(ref := self.parts[0], _Ref):
            return ref.name if ref.namespace == "erathos" else None
        return None

    @property
    def single_set_field(self) -> str | None:
        """The field's name when the string is exactly one ``${{set.x}}``."""
        if len(self.parts) == 1 and isinstance(ref := self.parts[0], _Ref):
            return ref.name if ref.namespace == "set" else None
        return None

    def uses_secrets(self) -> bool:
        return any(isinstance(p, _Ref) and p.namespace == "secrets" for p in self.parts)

    def render(
        self,
        event: ErathosEvent | None,
        lookup: Lookup,
        *,
        mask: bool = False,
        window: Mapping[str, Any] | None = None,
    ) -> str:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            elif part.namespace == "set":
                out.append(_set_text(window.get(part.name) if window is not None else None))
            elif part.namespace == "erathos":
                out.append(format_value(event.value(part.name)) if event is not None else "")
            elif mask:
                out.append(MASK)
            else:
                secret = lookup.secret(part.name)
                out.append(secret.get_secret_value() if secret is not None else "")
        return "".join(out)


def compile_text(text: str, lookup: Lookup, *, where: str, of_set: bool = False) -> Template:
    """Compile one string; ``where`` names the setting or field for error messages.
    ``of_set``: a set's flow run, which names ``${{set.*}}`` and never one load's
    ``${{erathos.*}}``."""
    parts: list[str | _Ref] = []
    position = 0
    for match in PLACEHOLDER.finditer(text):
        if match.start() > position:
            parts.append(text[position : match.start()])
        position = match.end()
        namespace, name = match.group(1).lower(), match.group(2)
        if namespace == "variables":
            value = lookup.variable(name)
            if value is None:
                raise TemplateError(
                    f"{where}: ${{{{variables.{name}}}}} names no variable: set {name.upper()}"
                )
            parts.append(value)
        elif namespace == "secrets":
            if lookup.secret(name) is None:
                raise TemplateError(
                    f"{where}: ${{{{secrets.{name}}}}} names no secret: set {name.upper()}"
                )
            parts.append(_Ref("secrets", name.upper()))
        elif namespace == "set":
            if not of_set:
                raise TemplateError(f"{where}: ${{{{set.{name}}}}} is only for a set's flow_run")
            if name.lower() not in SET_FIELDS:
                raise TemplateError(
                    f"{where}: ${{{{set.{name}}}}} is not a set's field "
                    f"(known: {', '.join(sorted(SET_FIELDS))})"
                )
            parts.append(_Ref("set", name.lower()))
        elif namespace == "erathos" and of_set:
            raise TemplateError(
                f"{where}: ${{{{erathos.{name}}}}} names one load; a set's run has several: "
                "use ${{set.loads}}"
            )
        elif namespace == "erathos":
            if name.lower() not in METADATA:
                raise TemplateError(
                    f"{where}: ${{{{erathos.{name}}}}} is not Erathos metadata "
                    f"(known: {', '.join(sorted(METADATA))})"
                )
            parts.append(_Ref("erathos", name.lower()))
        else:
            raise TemplateError(
                f"{where}: ${{{{{match.group(1)}.{name}}}}}: the namespace must be one of "
                f"{', '.join(NAMESPACES)}" + (" or set" if of_set else "")
            )
    if position < len(text):
        parts.append(text[position:])
    merged: list[str | _Ref] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    return Template(tuple(merged))


def compile_json(value: Any, lookup: Lookup, *, where: str, of_set: bool = False) -> Any:
    """Compile every string inside a JSON value; keys stay literal."""
    if isinstance(value, str):
        return compile_text(value, lookup, where=where, of_set=of_set)
    if isinstance(value, dict):
        return {
            k: compile_json(v, lookup, where=f"{where}.{k}", of_set=of_set)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            compile_json(v, lookup, where=f"{where}[{i}]", of_set=of_set)
            for i, v in enumerate(value)
        ]
    return value


def render_json(
    compiled: Any,
    event: ErathosEvent | None,
    lookup: Lookup,
    *,
    mask: bool = False,
    window: Mapping[str, Any] | None = None,
) -> Any:
    """Render a compiled JSON value. A string that is exactly one ``${{erathos.x}}``
    keeps the metadata's type (``rows`` stays an integer); so does one ``${{set.x}}``
    (``loads`` stays a list), from ``window``, the set's values."""
    if isinstance(compiled, Template):
        name = compiled.single_metadata
        if name is not None and event is not None:
            return _json_value(event.value(name))
        field = compiled.single_set_field
        if field is not None and window is not None:
            return window.get(field)
        return compiled.render(event, lookup, mask=mask, window=window)
    if isinstance(compiled, dict):
        return {
            k: render_json(v, event, lookup, mask=mask, window=window) for k, v in compiled.items()
        }
    if isinstance(compiled, list):
        return [render_json(v, event, lookup, mask=mask, window=window) for v in compiled]
    return compiled


def _set_text(value: Any) -> str:
    """A set's value inside a longer string: text as it is, anything else as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _json_value(value: Any) -> Any:
    """A lone placeholder's value as JSON: ids as text, dates and times ISO 8601 text
    (``06:15:00``, seconds kept), as the Prefect event's payload has them, so that a
    route's run and an automation's run of the same load get the same value."""
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, date | time):
        return value.isoformat()
    return value


def template_lookup(settings: Settings) -> Lookup:
    """What ``${{variables.X}}`` and ``${{secrets.X}}`` resolve to: the environment (and
    ``.env``) by upper-case name; secrets also from the secret settings and secret files."""
    secrets = settings.environment | settings.secret_files
    variables = {name: value.get_secret_value() for name, value in settings.environment.items()}
    for name, info in Settings.model_fields.items():
        if not isinstance(info.validation_alias, str):
            continue
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            secrets[info.validation_alias] = value
        if _is_secret_field(info.annotation):
            # A secret setting is never readable as plain ${{variables.X}} text.
            variables.pop(info.validation_alias, None)
    variables.pop("BRIDGE_DATABASE_URL", None)  # a PostgreSQL URL may carry a password
    return Lookup(variables=variables, secrets=secrets)


def _is_secret_field(annotation: Any) -> bool:
    return "SecretStr" in repr(annotation)

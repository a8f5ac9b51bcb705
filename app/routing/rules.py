"""Erathos rules: ``{"variable_name": "ROWS", "operation": "GREATER_THAN", "value": "0"}``.

The same syntax and semantics Erathos applies before it sends a webhook: all
rules must hold; values are strings (lists of strings for ``IN``/``NOT_IN``),
compared as the metadata's documented type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, time
from enum import StrEnum
from typing import Any
from uuid import UUID

from app.routing.event import METADATA, ErathosEvent, MetadataType, format_value


class Operation(StrEnum):
    EQUAL = "EQUAL"
    NOT_EQUAL = "NOT_EQUAL"
    IN = "IN"
    NOT_IN = "NOT_IN"
    LESS_THAN = "LESS_THAN"
    GREATER_THAN = "GREATER_THAN"


_EQUALITY = {Operation.EQUAL, Operation.NOT_EQUAL}
_MEMBERSHIP = {Operation.IN, Operation.NOT_IN}
_ORDER = {Operation.LESS_THAN, Operation.GREATER_THAN}

ALLOWED: dict[MetadataType, frozenset[Operation]] = {
    MetadataType.UUID: frozenset(_EQUALITY | _MEMBERSHIP),
    MetadataType.STRING: frozenset(_EQUALITY | _MEMBERSHIP),
    MetadataType.INTEGER: frozenset(_EQUALITY | _MEMBERSHIP | _ORDER),
    MetadataType.DATE: frozenset(_ORDER),
    MetadataType.TIME: frozenset(_ORDER),
    MetadataType.BOOLEAN: frozenset(_EQUALITY),
}


class RuleError(ValueError):
    """A rule that Erathos would not accept; the message names the field."""


@dataclass(frozen=True)
class Rule:
    variable: str  # lower-case metadata name
    operation: Operation
    operands: tuple[Any, ...]  # typed, one for every operation but IN/NOT_IN
    text: str = field(compare=False)  # the rule as written, for explanations

    @classmethod
    def parse(cls, raw: Any, *, where: str = "rule") -> Rule:
        """Validate one rule object (``erathos_variable`` is accepted for ``variable_name``)."""
        if not isinstance(raw, dict):
            raise RuleError(f"{where}: must be an object with variable_name, operation and value")
        name = raw.get("variable_name", raw.get("erathos_variable"))
        if not isinstance(name, str) or name.lower() not in METADATA:
            raise RuleError(
                f"{where}.variable_name: {name!r} is not Erathos metadata "
                f"(known: {', '.join(n.upper() for n in METADATA)})"
            )
        kind = METADATA[name.lower()]
        try:
            operation = Operation(str(raw.get("operation", "")).upper())
        except ValueError:
            raise RuleError(
                f"{where}.operation: {raw.get('operation')!r} is not one of "
                f"{', '.join(o.value for o in Operation)}"
            ) from None
        if operation not in ALLOWED[kind]:
            allowed = ", ".join(sorted(o.value for o in ALLOWED[kind]))
            raise RuleError(
                f"{where}.operation: {operation.value} is not allowed for {name.upper()} "
                f"({kind.value}); use {allowed}"
            )
        value = raw.get("value")
        if operation in _MEMBERSHIP:
            if not isinstance(value, list) or not value:
                raise RuleError(
                    f"{where}.value: {operation.value} takes a non-empty list of strings"
                )
            items = value
        else:
            if isinstance(value, list):
                raise RuleError(f"{where}.value: {operation.value} takes one string, not a list")
            items = [value]
        operands = tuple(_typed(kind, item, where=f"{where}.value") for item in items)
        if name.lower() == "status":  # incoming statuses are upper-cased; so are these
            operands = tuple(str(o).upper() for o in operands)
        return cls(name.lower(), operation, operands, _describe(name, operation, value))

    def holds(self, event: ErathosEvent) -> bool:
        """Whether the event satisfies the rule; a missing value satisfies nothing."""
        actual = event.value(self.variable)
        if actual is None:
            return False
        kind = METADATA[self.variable]
        if kind is MetadataType.STRING:
            actual = str(actual)
        elif kind is MetadataType.UUID and not isinstance(actual, UUID):
            try:  # execution ids are kept as text; compare them as UUIDs when they are
                actual = UUID(str(actual))
            except ValueError:
                return self.operation in (Operation.NOT_EQUAL, Operation.NOT_IN)
        match self.operation:
            case Operation.EQUAL:
                return bool(actual == self.operands[0])
            case Operation.NOT_EQUAL:
                return bool(actual != self.operands[0])
            case Operation.IN:
                return actual in self.operands
            case Operation.NOT_IN:
                return actual not in self.operands
            case Operation.LESS_THAN:
                return bool(actual < self.operands[0])
            case Operation.GREATER_THAN:
                return bool(actual > self.operands[0])
        return False  # pragma: no cover (the match is exhaustive)

    def explain_failure(self, event: ErathosEvent) -> str:
        actual = event.value(self.variable)
        shown = "missing" if actual is None else repr(format_value(actual))
        return f"{self.text} does not hold ({self.variable.upper()} is {shown})"


def parse_rules(raw: Any, *, where: str = "rules") -> tuple[Rule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise RuleError(f"{where}: must be a list of rules")
    return tuple(Rule.parse(item, where=f"{where}[{i}]") for i, item in enumerate(raw))


def first_failing(rules: tuple[Rule, ...], event: ErathosEvent) -> Rule | None:
    """The first rule the event does not satisfy, or None when all hold."""
    return next((rule for rule in rules if not rule.holds(event)), None)


def to_erathos(rule: Rule) -> dict[str, Any]:
    """The rule in the JSON shape Erathos's webhook definition takes."""
    values = [_as_text(v) for v in rule.operands]
    value: Any = values if rule.operation in _MEMBERSHIP else values[0]
    return {
        "variable_name": rule.variable.upper(),
        "operation": rule.operation.value,
        "value": value,
    }


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, time) and (value.second or value.microsecond):
        return value.isoformat()
    return format_value(value)


def _typed(kind: MetadataType, value: Any, *, where: str) -> Any:
    if not isinstance(value, str):
        raise RuleError(
            f"{where}: must be a string (Erathos rule values are strings), got {value!r}"
        )
    text = value.strip()
    try:
        match kind:
            case MetadataType.STRING:
                return value
            case MetadataType.UUID:
                return UUID(text)
            case MetadataType.INTEGER:
                return int(text)
            case MetadataType.BOOLEAN:
                lowered = text.lower()
                if lowered not in ("true", "false"):
                    raise ValueError(lowered)
                return lowered == "true"
            case MetadataType.DATE:
                return date.fromisoformat(text)
            case MetadataType.TIME:
                return time.fromisoformat(text)
    except ValueError:
        pass
    raise RuleError(f"{where}: {value!r} is not a valid {kind.value}")


def _describe(name: str, operation: Operation, value: Any) -> str:
    return f"{name.upper()} {operation.value} {value!r}"

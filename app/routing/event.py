"""The Erathos event: the JSON body an Erathos orchestration webhook sends us.

Erathos substitutes its ``${{erathos.*}}`` placeholders into strings, so every
value may arrive as a string (``"1520"``, ``"true"``); names may arrive in any
case. Both are normalised here, once, into typed metadata.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema


class MetadataType(StrEnum):
    """The types Erathos documents for its execution metadata (they decide the rule operators)."""

    UUID = "uuid"
    STRING = "string"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    DATE = "date"
    TIME = "time"


# The complete documented list of `erathos.*` metadata, by lower-case name.
METADATA: dict[str, MetadataType] = {
    "job_id": MetadataType.UUID,
    "connection_id": MetadataType.UUID,
    "connection_name": MetadataType.STRING,
    "schema_name": MetadataType.STRING,
    "table_name": MetadataType.STRING,
    "execution_id": MetadataType.UUID,
    "status": MetadataType.STRING,
    "rows": MetadataType.INTEGER,
    "columns": MetadataType.INTEGER,
    "total_duration": MetadataType.INTEGER,
    "triggered_by": MetadataType.STRING,
    "is_orchestration": MetadataType.BOOLEAN,
    "force_history": MetadataType.BOOLEAN,
    "nested_table": MetadataType.BOOLEAN,
    "finished_at_date": MetadataType.DATE,
    "finished_at_time": MetadataType.TIME,
    "finished_at_weekday": MetadataType.INTEGER,
}

# Erathos documents execution ids as UUIDs; anything id-shaped is accepted so that
# an unexpected format is still delivered rather than refused and lost. Never a "/":
# drop-in calls are stored under keys that have one (app.routing.router.dropin_key).
_EXECUTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_EMPTY = {"", "null", "none"}
MAX_EXTRA_FIELDS = 100  # unknown fields are kept with the event, but not without bound

ShortText = Annotated[str, StringConstraints(max_length=1024)]
Count = Annotated[int, Field(ge=0, le=2**53 - 1)]  # the largest integer JSON carries exactly


class ErathosEvent(BaseModel):
    """One finished Erathos execution. Only ``execution_id`` is required."""

    model_config = ConfigDict(frozen=True, str_strip_whitespace=True)

    execution_id: Annotated[str, StringConstraints(pattern=_EXECUTION_ID.pattern)]
    job_id: UUID | None = None
    connection_id: UUID | None = None
    connection_name: ShortText | None = None
    schema_name: ShortText | None = None
    table_name: ShortText | None = None
    status: Annotated[str, StringConstraints(max_length=64, to_upper=True)] | None = None
    rows: Count | None = None
    columns: Count | None = None
    total_duration: Count | None = None
    triggered_by: ShortText | None = None
    is_orchestration: bool | None = None
    force_history: bool | None = None
    nested_table: bool | None = None
    finished_at_date: date | None = None
    finished_at_time: time | None = None
    finished_at_weekday: Annotated[int, Field(ge=0, le=6)] | None = None
    # Unknown fields of the body: kept with the event, never part of its published shape.
    extra: SkipJsonSchema[dict[str, Any]] = Field(default_factory=dict, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _normalise_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        known: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        if len(data) > len(METADATA) + MAX_EXTRA_FIELDS:
            raise ValueError(
                f"body: {len(data)} fields; at most {MAX_EXTRA_FIELDS} beyond Erathos's own"
            )
        for key, value in data.items():
            name = str(key).lower()
            if name not in METADATA:
                extra[key] = value
                continue
            if name in known:
                raise ValueError(f"{name}: given more than once (names are case-insensitive)")
            known[name] = _blank_to_none(value)
        return {**known, "extra": extra}

    @field_validator("execution_id", mode="before")
    @classmethod
    def _execution_id(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            return value
        value = value.strip()
        if not _EXECUTION_ID.match(value):
            raise ValueError("must be the Erathos execution id (a UUID)")
        try:
            return str(UUID(value))
        except ValueError:
            return value

    @field_validator("finished_at_time")
    @classmethod
    def _naive_utc(cls, value: time | None) -> time | None:
        # Erathos sends HH:MM in UTC; an explicit offset is folded into UTC so that
        # comparisons with rule times (naive, UTC) never mix aware and naive values.
        offset = value.utcoffset() if value is not None else None
        if value is None or offset is None:
            return value
        return (datetime.combine(date(2000, 1, 1), value) - offset).time()

    def value(self, name: str) -> Any:
        """The typed value of a metadata field, by case-insensitive name."""
        return getattr(self, name.lower())

    def as_strings(self) -> dict[str, str]:
        """Every metadata value as Erathos would substitute it into a string."""
        return {name: format_value(getattr(self, name)) for name in METADATA}


def format_value(value: Any) -> str:
    """A metadata value as Erathos renders it into a template string."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, time):
        return value.strftime("%H:%M")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in _EMPTY:
        return None
    return value

"""Stored times (epoch seconds) as every answer shows them: ISO 8601 in UTC. One place, so
the API's JSON, the CLI and the console never write the same instant two ways."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import TypeAdapter

_TIME = TypeAdapter(datetime)


def utc_time(epoch: float) -> datetime:
    """A stored time (epoch seconds) as every answer shows it: ISO 8601 in UTC, written
    ``2026-11-30T08:03:59.225778Z`` once serialised."""
    return datetime.fromtimestamp(epoch, UTC)


def iso_utc(epoch: float) -> str:
    """A stored time as text, exactly as the API's JSON writes it (for the CLI)."""
    text: str = _TIME.dump_python(utc_time(epoch), mode="json")
    return text

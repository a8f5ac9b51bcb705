"""The Prefect event an Erathos execution becomes (with ``BRIDGE_PREFECT_EVENTS``, or a
routes file connection's ``"events": true``), and the request that emits it.

A pure function of the stored event: a retry, a replay or a redelivered webhook makes
the same event, with the same id. Its shape is public (docs/events.md, "The event"): automations
are written against it, so names may grow, never change.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, date, datetime, time
from typing import Any

from app.routing.event import METADATA, ErathosEvent
from app.routing.router import DEFAULT_CONNECTION, PrefectRequest
from app.storage.records import PREFECT_EVENT_ROUTE, EventRecord

# An event's id is uuid5(NAMESPACE, "<execution_id>/<event name>"). Never change it: a
# new namespace would make every retry and replay a new event for Prefect.
NAMESPACE = uuid.UUID("c8fab1f6-bd4b-4baa-89ea-32802a0a87ae")
EVENTS_PATH = "events"  # POST {api}/events; "events/" answers 307
# Prefect answers 204 to an event of about 1.5 MB and drops it: refused before that.
MAX_EVENT_BYTES = 1_000_000
UNKNOWN = "unknown"  # in a name or id whose Erathos field is missing

# The resource's labels, each an Erathos field as a string (left out when absent).
LABELS = {
    "erathos.job.id": "job_id",
    "erathos.connection.id": "connection_id",
    "erathos.connection.name": "connection_name",
    "erathos.schema.name": "schema_name",
    "erathos.table.name": "table_name",
    "erathos.execution.id": "execution_id",
    "erathos.status": "status",
}
_NOT_A_NAME = re.compile(r"[^a-z0-9_]+")


def emission_route(connection: str) -> str:
    """The route of an emission's delivery: ``prefect-event`` on the default connection,
    ``prefect-event:<connection>`` on another (one delivery per event and route)."""
    if connection == DEFAULT_CONNECTION:
        return PREFECT_EVENT_ROUTE
    return f"{PREFECT_EVENT_ROUTE}:{connection}"


def is_emission(route: str) -> bool:
    return route == PREFECT_EVENT_ROUTE or route.startswith(f"{PREFECT_EVENT_ROUTE}:")


def event_name(status: str | None) -> str:
    """``erathos.job.finished``, ``erathos.job.failed``; another status, lower-case with
    anything but letters, digits and ``_`` made ``_``; none: ``erathos.job.unknown``."""
    word = _NOT_A_NAME.sub("_", (status or "").lower()).strip("_")
    return f"erathos.job.{word or UNKNOWN}"


def event_id(execution_id: str, name: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"{execution_id}/{name}")


def emission_key(event: ErathosEvent) -> str:
    """The idempotency key an emission's delivery is stored with: its event's id."""
    return str(event_id(event.execution_id, event_name(event.status)))


def id_of_key(key: str) -> str:
    """The id an emission is sent with: its key, which is the event's id, unless a replay
    with a new run gave it a new key (``<id>:replay-...``), whose uuid5 is then a new id."""
    try:
        return str(uuid.UUID(key))
    except ValueError:
        return str(uuid.uuid5(NAMESPACE, key))


def prefect_event(stored: EventRecord, key: str | None = None) -> dict[str, Any]:
    """The Prefect event of a stored Erathos event; ``key`` is its delivery's idempotency
    key (by default the event's own id). Raises ValueError (pydantic's ValidationError)
    for a stored payload that is no longer a valid Erathos event."""
    event = ErathosEvent.model_validate(stored.payload)
    name = event_name(event.status)
    fields = {field: _json(event.value(field)) for field in METADATA}
    resource = {"prefect.resource.id": f"erathos.job.{fields['job_id'] or UNKNOWN}"}
    table_name = ".".join(str(part) for part in (event.schema_name, event.table_name) if part)
    if table_name:
        resource["prefect.resource.name"] = table_name
    for label, field in LABELS.items():
        if fields[field] is not None:
            resource[label] = str(fields[field])
    return {
        "id": id_of_key(key) if key is not None else str(event_id(event.execution_id, name)),
        "occurred": _occurred(event, stored.received_at),
        "event": name,
        "resource": resource,
        "related": _related(event),
        "payload": fields,
    }


def emission_request(stored: EventRecord, key: str | None = None) -> PrefectRequest:
    """``POST {api}/events`` with the one event (Prefect takes a list)."""
    return PrefectRequest(EVENTS_PATH, [prefect_event(stored, key)])


def too_large(request: PrefectRequest) -> str | None:
    """Why the request is not sent (over ``MAX_EVENT_BYTES`` as sent), or None."""
    size = len(
        json.dumps(
            request.body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
    )
    if size <= MAX_EVENT_BYTES:
        return None
    return (
        f"the event is {size:,} bytes serialised, over the {MAX_EVENT_BYTES:,} allowed: not "
        "sent (Prefect answers 204 to an event this large and drops it)"
    )


def _related(event: ErathosEvent) -> list[dict[str, str]]:
    """The connection, and the table of that connection, when their ids are known."""
    if event.connection_id is None:
        return []
    connection = {
        "prefect.resource.id": f"erathos.connection.{event.connection_id}",
        "prefect.resource.role": "connection",
    }
    if event.connection_name:
        connection["prefect.resource.name"] = event.connection_name
    related = [connection]
    if event.schema_name and event.table_name:
        table = f"{_id_part(event.schema_name)}.{_id_part(event.table_name)}"
        related.append(
            {
                "prefect.resource.id": f"erathos.table.{event.connection_id}.{table}",
                "prefect.resource.role": "table",
                "prefect.resource.name": f"{event.schema_name}.{event.table_name}",
            }
        )
    return related


def _id_part(name: str) -> str:
    """A name as one part of a dotted resource id: its ``%`` and ``.`` percent-encoded, so
    that schema ``a.b`` with table ``c`` and schema ``a`` with table ``b.c`` are two
    resources (a name with neither is written as it is)."""
    return name.replace("%", "%25").replace(".", "%2E")


def _occurred(event: ErathosEvent, received_at: float) -> str:
    """Erathos's finished date and time (UTC, to the minute), or the time of receipt when
    either is missing, or when it is later than that: Prefect takes a future ``occurred``
    as given, and a debounced trigger would then ignore the table until that time (the
    payload keeps Erathos's own finish time)."""
    received = datetime.fromtimestamp(received_at, UTC)
    if event.finished_at_date is None or event.finished_at_time is None:
        return _utc_text(received)
    finished = datetime.combine(event.finished_at_date, event.finished_at_time, tzinfo=UTC)
    return _utc_text(min(finished, received))


def _utc_text(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _json(value: Any) -> Any:
    """An Erathos field as JSON: numbers and booleans kept, ids as text, dates and times
    as ISO 8601 text."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, date | time):
        return value.isoformat()
    return value

"""The schema: the tables every store shares, and their creation or upgrade (run once per
start, by whichever replica gets the migration lock first)."""

from __future__ import annotations

import json
from collections.abc import Callable

from sqlalchemy import (
    Column,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from app.records import StoreUnavailable
from app.routes import DROP_IN_ROUTE

SCHEMA_VERSION = 2
# pg_advisory_xact_lock key that serialises schema creation and upgrades between
# replicas starting at once (any constant; this one spells "EPBS" in ASCII).
MIGRATION_LOCK_KEY = 0x45504253


class Str(TypeDecorator[str]):
    """Text any dialect can store: PostgreSQL refuses NUL characters in text (SQLite
    keeps them), so there they become U+FFFD instead of failing every retry with a 503.
    Unbounded on purpose: SQLite ignores lengths, PostgreSQL would enforce them."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is not None and dialect.name == "postgresql" and "\x00" in value:
            return value.replace("\x00", "\ufffd")
        return value


metadata = MetaData()

meta = Table(
    "bridge_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Str, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("execution_id", Str, nullable=False, unique=True),
    Column("received_at", Float, nullable=False, index=True),  # epoch seconds (double)
    Column("job_id", Str, index=True),
    Column("schema_name", Str),
    Column("table_name", Str),
    Column("status", Str),
    Column("payload", Str, nullable=False),
    Column("ignored_reason", Str),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("event_id", String(32), ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
    Column("route", Str, nullable=False),
    Column("connection", Str, nullable=False),
    Column("idempotency_key", Str, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("window_started_at", Float, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_owner", Str),
    Column("lease_expires_at", Float),
    Column("flow_run_id", Str),
    Column("flow_run_url", Str),
    Column("last_status_code", Integer),
    Column("last_error", Str),
    Column("finished_at", Float),
    UniqueConstraint("event_id", "route"),
    Index("deliveries_due", "state", "connection", "next_attempt_at"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("delivery_id", String(32), ForeignKey("deliveries.id", ondelete="CASCADE"), index=True),
    Column("number", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("status_code", Integer),
    Column("error", Str),
    Column("response_excerpt", Str),
    Column("retry_in", Float),
)


def migrate(conn: Connection) -> None:
    """Create the schema, or find it current; refuse a newer one."""
    if conn.dialect.name == "postgresql":
        # Replicas starting at once take turns: the first creates or upgrades the
        # schema, the others then find it current. The lock is released with the
        # transaction (or when a replica dies holding it), so waiting for it has no
        # time limit.
        conn.execute(text("SET LOCAL lock_timeout = 0"))
        conn.execute(text("SET LOCAL statement_timeout = 0"))
        conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
    # SQLite: BEGIN IMMEDIATE has taken the database's write lock already.
    meta.create(conn, checkfirst=True)
    found = conn.scalar(select(meta.c.value).where(meta.c.key == "schema_version"))
    version = int(found) if found is not None else 0
    if version > SCHEMA_VERSION:
        raise StoreUnavailable(
            f"the database has schema version {version}, newer than this release "
            f"understands ({SCHEMA_VERSION}); run the newer release"
        )
    if version == SCHEMA_VERSION:
        return
    if version == 0:  # an empty database: the current schema at once
        metadata.create_all(conn, checkfirst=True)
    else:
        for step in UPGRADES[version - 1 :]:
            step(conn)
    upsert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(meta)
    conn.execute(
        upsert.on_conflict_do_update(
            index_elements=[meta.c.key], set_={"value": upsert.excluded.value}
        ),
        {"key": "schema_version", "value": str(SCHEMA_VERSION)},
    )


def _key_drop_in_events_by_target(conn: Connection) -> None:
    """1 -> 2: a Prefect-shaped request's event is keyed by its target and its
    idempotency key (``flow:<id>:<key>``, ``deployment:<id>:<key>``), as Prefect
    deduplicates; version 1 keyed it by the idempotency key alone, so one flow's run
    could stand in for another's."""
    found = conn.execute(
        select(events.c.id, events.c.execution_id, events.c.payload).where(
            events.c.payload.like(f'%"{DROP_IN_ROUTE}"%')
        )
    )
    for row in found.all():
        stored = json.loads(row.payload).get(DROP_IN_ROUTE)
        if not isinstance(stored, dict):
            continue  # an Erathos event that merely carries the word
        path, body = str(stored.get("path", "")), stored.get("body") or {}
        if path == "flow_runs/":
            target = f"flow:{body.get('flow_id')}"
        elif path.startswith("deployments/"):
            target = f"deployment:{path.split('/')[1]}"
        else:
            continue
        keyed = update(events).where(events.c.id == row.id)
        conn.execute(keyed.values(execution_id=f"{target}:{row.execution_id}"))


# UPGRADES[n] turns a database of version n + 1 into one of version n + 2.
UPGRADES: tuple[Callable[[Connection], None], ...] = (_key_drop_in_events_by_target,)
assert len(UPGRADES) == SCHEMA_VERSION - 1

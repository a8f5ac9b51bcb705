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
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from app.errors import StoreUnavailable
from app.storage.records import DROP_IN_ROUTE, PREFECT_EVENT_ROUTE, dropin_key

SCHEMA_VERSION = 6
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


def dialect_insert(dialect: Dialect, table: Table) -> postgresql.Insert | sqlite.Insert:
    """The dialect's INSERT, which has ``ON CONFLICT`` (both dialects spell it alike)."""
    return postgresql.insert(table) if dialect.name == "postgresql" else sqlite.insert(table)


def _partial(name: str, *columns: str, where: str) -> Index:
    return Index(name, *columns, sqlite_where=text(where), postgresql_where=text(where))


FOLLOW_INDEXES = (
    # The follower's claims (per connection, the most overdue first) and the followed gauge.
    _partial(
        "deliveries_followed", "connection", "follow_due_at", where="follow_due_at IS NOT NULL"
    ),
    # The run-state filter, newest first, as the listing pages.
    _partial(
        "deliveries_run_state", "run_state", "created_at", "event_id", where="run_state IS NOT NULL"
    ),
    # The overview's runs by final state over a day.
    _partial(
        "deliveries_run_state_at", "run_state_at", "run_state", where="run_state_at IS NOT NULL"
    ),
)

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
    Column("received_at", Float, nullable=False),  # epoch seconds (double)
    Column("job_id", Str, index=True),
    Column("schema_name", Str),
    Column("table_name", Str),
    Column("status", Str),
    Column("payload", Str, nullable=False),
    Column("ignored_reason", Str),
    # The event's state as its deliveries sum it up (app.storage.records.event_state), kept in
    # the transaction that changes them, so that listing by state is an index range.
    Column("state", String(16), nullable=False, server_default=text("'pending'")),
    Index("events_state_received", "state", "received_at", "id"),
    # The time first (pages, pruning), then what a search through every execution id
    # reads, so that it reads this index alone (app.storage.history.History.list_events).
    Index("events_received", "received_at", "execution_id", "id"),
    Index("events_table_received", "table_name", "received_at"),
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
    # Where the delivery stands among its event's, as routing made them: every answer
    # lists them in this order (flow runs first, then emissions).
    Column("ordinal", Integer, nullable=False, server_default=text("0")),
    # ``attempts`` counts every attempt ever made; the retry budget, those since the
    # last replay (which set this to the attempts made before it).
    Column("attempts_before_replay", Integer, nullable=False, server_default=text("0")),
    # Its flow run as followed in Prefect (app.delivery.follow): the run's state (a RunState)
    # and that state's time, the run's start and end; ``follow_due_at`` is when it is asked
    # for next (NULL: not followed), and while ``follow_owner`` holds it, its lease's end.
    Column("run_state", String(16)),
    Column("run_state_at", Float),
    Column("run_started_at", Float),
    Column("run_ended_at", Float),
    Column("follow_due_at", Float),
    Column("follow_owner", Str),
    UniqueConstraint("event_id", "route"),
    Index("deliveries_due", "state", "connection", "next_attempt_at"),
    # Partial indexes: each holds only the rows it serves (followed runs, runs with a
    # state), never the million deliveries that have none.
    *FOLLOW_INDEXES,
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

# A set's windows (app.storage.sets): one row per window, open until it completes or its
# deadline passes; ``deadline_at`` of the open ones is the durable timer.
set_windows = Table(
    "set_windows",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("set_name", Str, nullable=False),
    Column("window_key", Str, nullable=False),  # the window's id: ${{set.window}}
    Column("state", String(16), nullable=False),  # open, completed, late
    Column("starts_at", Float, nullable=False),
    Column("deadline_at", Float, nullable=False),
    Column("opened_at", Float, nullable=False),
    Column("closed_at", Float),
    Column("missing", Str),  # JSON list of the members missing when it closed
    Column("event_id", String(32)),  # the event its closing made (no key: events are pruned)
    UniqueConstraint("set_name", "window_key"),
    Index("set_windows_due", "state", "deadline_at"),
    Index("set_windows_latest", "set_name", "starts_at"),
    # What operators list, newest first: all windows, the open ones, one set's.
    Index("set_windows_opened", "opened_at"),
    Index("set_windows_state_opened", "state", "opened_at"),
    Index("set_windows_set_opened", "set_name", "opened_at"),
)

# The load each member made in a window: the latest replaces an earlier one.
set_loads = Table(
    "set_loads",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "window_id",
        String(32),
        ForeignKey("set_windows.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("member", Str, nullable=False),  # as written in the set's members
    Column("execution_id", Str, nullable=False, index=True),
    Column("joined_at", Float, nullable=False),
    Column("load", Str, nullable=False),  # JSON: the load as ${{set.loads}} lists it
    UniqueConstraint("window_id", "member"),
)


# How fresh each route's data is when its run ends: per route, clock hour (UTC, counted
# from the epoch) the run ended in and basis ("finish": from Erathos's finish time;
# "receipt": from the webhook's arrival), how many runs fell in each histogram bucket
# (an index into app.storage.runs.FRESHNESS_BUCKETS). A day is at most 25 hours of rows.
run_freshness = Table(
    "run_freshness",
    metadata,
    Column("route", Str, primary_key=True),
    Column("hour", Integer, primary_key=True),
    Column("basis", String(16), primary_key=True),
    Column("bucket", Integer, primary_key=True),
    Column("runs", Integer, nullable=False),
    Index("run_freshness_hour", "hour"),
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
    stamp = str(SCHEMA_VERSION)
    upsert = dialect_insert(conn.dialect, meta).values(key="schema_version", value=stamp)
    conn.execute(upsert.on_conflict_do_update(index_elements=[meta.c.key], set_={"value": stamp}))


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


def _version_3(conn: Connection) -> None:
    """2 -> 3: deliveries keep their order and count their attempts across replays;
    drop-in events are keyed apart from Erathos execution ids."""
    present = {column["name"] for column in inspect(conn).get_columns("deliveries")}
    for name in ("ordinal", "attempts_before_replay"):
        if name not in present:
            conn.execute(
                text(f"ALTER TABLE deliveries ADD COLUMN {name} INTEGER NOT NULL DEFAULT 0")
            )
    _order_old_deliveries(conn)
    _count_attempts_across_replays(conn)
    _key_drop_in_events_apart(conn)


def _order_old_deliveries(conn: Connection) -> None:
    """Their routing order is not known: emissions after flow runs (as routing made them),
    the flow runs among themselves by route name (as the answers listed them)."""
    emission = or_(
        deliveries.c.route == PREFECT_EVENT_ROUTE,
        deliveries.c.route.startswith(f"{PREFECT_EVENT_ROUTE}:", autoescape=True),
    )
    conn.execute(update(deliveries).where(emission).values(ordinal=1))


def _count_attempts_across_replays(conn: Connection) -> None:
    """A replay used to reset ``attempts``, so a replayed delivery's attempts were numbered
    from 1 again: each is renumbered in the order made, and the delivery counts them all
    (those before its last replay apart, as its retry budget counts only the others)."""
    made = select(func.count()).where(attempts.c.delivery_id == deliveries.c.id).scalar_subquery()
    conn.execute(
        update(deliveries)
        .where(made > deliveries.c.attempts)
        .values(attempts_before_replay=made - deliveries.c.attempts, attempts=made)
    )
    repeated = (
        select(attempts.c.delivery_id)
        .group_by(attempts.c.delivery_id)
        .having(func.count() != func.count(attempts.c.number.distinct()))
    )
    earlier = attempts.alias("earlier")
    rank = (
        select(func.count())
        .where(earlier.c.delivery_id == attempts.c.delivery_id, earlier.c.id <= attempts.c.id)
        .scalar_subquery()
    )
    conn.execute(update(attempts).where(attempts.c.delivery_id.in_(repeated)).values(number=rank))


def _key_drop_in_events_apart(conn: Connection) -> None:
    """``flow:<id>:<key>`` and ``deployment:<id>:<key>`` become :func:`dropin_key`'s form,
    which no Erathos execution id can take (they have no ``/``). The events are found by
    their drop-in delivery, never by what their payload says."""
    found = conn.execute(
        select(events.c.id, events.c.execution_id)
        .join(deliveries, deliveries.c.event_id == events.c.id)
        .where(deliveries.c.route == DROP_IN_ROUTE)
    )
    for row in found.all():
        kind, _, rest = str(row.execution_id).partition(":")
        target, colon, key = rest.partition(":")
        if kind not in ("flow", "deployment") or not colon:
            continue
        keyed = update(events).where(events.c.id == row.id)
        conn.execute(keyed.values(execution_id=dropin_key(kind, target, key)))


def _version_4(conn: Connection) -> None:
    """3 -> 4: each event keeps its state (app.storage.event_state), filled in for those stored."""
    from app.storage.event_state import fill_states  # the state's rules live beside its updates

    present = {column["name"] for column in inspect(conn).get_columns("events")}
    if "state" not in present:
        conn.execute(
            text("ALTER TABLE events ADD COLUMN state VARCHAR(16) NOT NULL DEFAULT 'pending'")
        )
    fill_states(conn)
    for index in events.indexes:
        index.create(conn, checkfirst=True)
    conn.execute(text("DROP INDEX IF EXISTS ix_events_received_at"))  # events_received's start


def _version_5(conn: Connection) -> None:
    """4 -> 5: sets of tables, their windows and the loads in them (new tables only)."""
    set_windows.create(conn, checkfirst=True)
    set_loads.create(conn, checkfirst=True)


def _version_6(conn: Connection) -> None:
    """5 -> 6: deliveries keep their flow run's state as followed in Prefect, with the
    indexes its queries are planned on, and the freshness histogram per route and hour."""
    present = {column["name"] for column in inspect(conn).get_columns("deliveries")}
    added = {
        "run_state": "VARCHAR(16)",
        "run_state_at": "FLOAT",
        "run_started_at": "FLOAT",
        "run_ended_at": "FLOAT",
        "follow_due_at": "FLOAT",
        "follow_owner": "TEXT",
    }
    for name, kind in added.items():
        if name not in present:
            conn.execute(text(f"ALTER TABLE deliveries ADD COLUMN {name} {kind}"))
    for index in FOLLOW_INDEXES:
        index.create(conn, checkfirst=True)
    run_freshness.create(conn, checkfirst=True)
    # Runs delivered before this version are not followed: their state was never asked
    # for, and most ended long ago.


# UPGRADES[n] turns a database of version n + 1 into one of version n + 2.
UPGRADES: tuple[Callable[[Connection], None], ...] = (
    _key_drop_in_events_by_target,
    _version_3,
    _version_4,
    _version_5,
    _version_6,
)
assert len(UPGRADES) == SCHEMA_VERSION - 1

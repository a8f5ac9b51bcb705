"""What operators read and change: events with their deliveries and attempts, the queue
at a glance (for metrics), replays, and pruning past the retention period. Used by the
admin API, the CLI, the metrics endpoint and the dispatcher's pruning; the path of one
webhook never needs it (that is :mod:`app.storage.store`)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Integer, cast, func, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from app.storage.database import Database
from app.storage.event_state import refresh_state
from app.storage.maintenance import PRUNE_BATCH, prune_finished, reclaim_space
from app.storage.records import (
    AttemptRecord,
    DeliveryNotFound,
    DeliveryRecord,
    DeliveryState,
    DeliveryStillPending,
    EventRecord,
    EventState,
    RunState,
)
from app.storage.schema import attempts, deliveries, events
from app.storage.store import (
    DELIVERY_ORDER,
    NOT_FOLLOWED,
    PENDING,
    Clock,
    delivery_of,
    event_of,
    with_deliveries,
)

_REPLAY_SUFFIX = re.compile(r":replay-[0-9a-f]{8}$")
# A page's cursor: the last event's (received_at, id), as `list_events` takes it in `before`.
CURSOR_PATTERN = r"^\d+(\.\d+)?(e[+-]?\d+)?_[0-9a-f]{32}$"


def page_cursor(event: EventRecord) -> str:
    """The cursor of the page after the one ``event`` ends (the admin API's and the
    console's ``cursor``)."""
    return f"{event.received_at!r}_{event.id}"


def parse_cursor(cursor: str) -> tuple[float, str]:
    """A cursor back as ``list_events``' ``before``; ValueError when it is not one."""
    if re.match(CURSOR_PATTERN, cursor) is None:
        raise ValueError("not a cursor")
    received_at, _, event_id = cursor.partition("_")
    return float(received_at), event_id


class History:
    """The stored events, for operators. Raises :class:`app.storage.records.StoreUnavailable`
    when the store cannot be used, and :class:`DeliveryNotFound` or
    :class:`DeliveryStillPending` for a replay that cannot be made."""

    def __init__(self, database: Database, clock: Clock = time.time) -> None:
        self.database = database
        self.clock = clock

    async def get_event(self, event_id: str) -> tuple[EventRecord, list[DeliveryRecord]] | None:
        def work(conn: Connection) -> tuple[EventRecord, list[DeliveryRecord]] | None:
            row = conn.execute(select(events).where(events.c.id == event_id)).one_or_none()
            if row is None:
                return None
            found = with_deliveries(conn, row, created=False)
            return found.event, found.deliveries

        return await self.database.read(work)

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        query = select(deliveries).where(deliveries.c.id == delivery_id)
        row = await self.database.read(lambda conn: conn.execute(query).one_or_none())
        return delivery_of(row._mapping) if row is not None else None

    async def get_deliveries(self, delivery_ids: Sequence[str]) -> list[DeliveryRecord]:
        """The deliveries of these ids that exist, in the order asked for (one query)."""
        query = select(deliveries).where(deliveries.c.id.in_(delivery_ids))
        rows = await self.database.read(lambda conn: conn.execute(query).all())
        found = {row.id: delivery_of(row._mapping) for row in rows}
        return [found[i] for i in dict.fromkeys(delivery_ids) if i in found]

    async def attempts_of(self, delivery_ids: Sequence[str]) -> list[AttemptRecord]:
        query = (
            select(attempts)
            .where(attempts.c.delivery_id.in_(delivery_ids))
            .order_by(attempts.c.delivery_id, attempts.c.id)
        )
        found = await self.database.read(lambda conn: conn.execute(query).all())
        return [AttemptRecord(**row._mapping) for row in found]

    async def pending_summary(self) -> dict[str, tuple[int, float]]:
        """Per connection: how many deliveries are pending and when the oldest became due
        (its ``window_started_at``). One query on the ``deliveries_due`` index (state
        first), reading pending rows only: cheap enough for every metrics scrape."""
        query = (
            select(
                deliveries.c.connection,
                func.count(),
                func.min(deliveries.c.window_started_at),
            )
            .where(deliveries.c.state == PENDING)
            .group_by(deliveries.c.connection)
        )
        rows = await self.database.read(lambda conn: conn.execute(query).all())
        return {row[0]: (int(row[1]), float(row[2])) for row in rows}

    async def list_events(
        self,
        *,
        state: EventState | None = None,
        job_id: str | None = None,
        table_name: str | None = None,
        execution_id_contains: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: tuple[float, str] | None = None,
        run_state: RunState | None = None,
        limit: int = 50,
    ) -> list[tuple[EventRecord, list[DeliveryRecord]]]:
        """Newest first; ``before`` is the (received_at, id) cursor of the previous page.
        ``execution_id_contains`` matches part of the execution id, ignoring case.
        ``run_state``: events with a flow run in that state, found on the run-state index
        (a delivery is made when its event arrives: its ``created_at`` is the event's
        ``received_at``, so the index walks the events newest first).

        The page's ids are chosen first, from the index columns alone (an index on the
        time, the execution id and the id covers a search through every execution id;
        one on the state, the time and the id covers a state's page), then their rows
        are read: never a million rows of payloads read to be filtered."""
        if run_state is not None:
            at, event_id = deliveries.c.created_at, deliveries.c.event_id
            query = select(event_id).join(events, events.c.id == event_id)
            query = query.where(deliveries.c.run_state == run_state.value)
        else:
            at, event_id = events.c.received_at, events.c.id
            query = select(event_id)
        if job_id is not None:
            query = query.where(events.c.job_id == job_id)
        if table_name is not None:
            query = query.where(events.c.table_name == table_name)
        if execution_id_contains:
            # A position, not LIKE: no character typed is a wildcard, and finding a
            # substring costs each row less (bench/README.md, figure 10).
            position = func.strpos if self.database.postgres else func.instr
            lower = func.lower
            found_at = position(lower(events.c.execution_id), lower(execution_id_contains))
            query = query.where(found_at > 0)
        if since is not None:
            query = query.where(at >= since)
        if until is not None:
            query = query.where(at < until)
        if before is not None:
            received_at, last_id = before
            # The bound on the time alone first, so the index's range starts there.
            query = query.where(at <= received_at, or_(at < received_at, event_id < last_id))
        if state is not None:
            query = query.where(events.c.state == state.value)
        if run_state is not None:
            # An event with several runs in the state is one event of the page, once.
            query = query.group_by(event_id, at)
        chosen = query.order_by(at.desc(), event_id.desc()).limit(limit).scalar_subquery()
        newest_first = (events.c.received_at.desc(), events.c.id.desc())
        page = select(events).where(events.c.id.in_(chosen)).order_by(*newest_first).limit(limit)

        def work(conn: Connection) -> list[tuple[EventRecord, list[DeliveryRecord]]]:
            rows = conn.execute(page).all()
            found = conn.execute(
                select(deliveries)
                .where(deliveries.c.event_id.in_([row.id for row in rows]))
                .order_by(*DELIVERY_ORDER)
            )
            by_event: dict[str, list[DeliveryRecord]] = {}
            for d in found:
                by_event.setdefault(d.event_id, []).append(delivery_of(d._mapping))
            return [(event_of(row._mapping), by_event.get(row.id, [])) for row in rows]

        return await self.database.read(work)

    async def outcomes_by_hour(self, since: float) -> list[tuple[float, EventState, int]]:
        """How many events received at or after ``since`` are in each state now, per
        clock hour (UTC) they arrived in: (the hour's first epoch second, state, count),
        oldest hour first. The console's counts by state and its events-per-hour chart;
        a day is at most 25 hours of 4 states, however many events it held.

        Each event's state is its column (:mod:`app.storage.event_state`): one pass over
        the day's events on the ``received_at`` index, grouped by hour and state."""

        def work(conn: Connection) -> list[tuple[float, EventState, int]]:
            hour = _hour_of(events.c.received_at, conn.dialect.name).label("hour")
            query = (
                select(hour, events.c.state, func.count())
                .where(events.c.received_at >= since)
                .group_by(hour, events.c.state)
            )
            found = [
                (float(h) * HOUR, EventState(state), int(n)) for h, state, n in conn.execute(query)
            ]
            # In each hour, the least telling state first (as before schema 4 kept it).
            return sorted(found, key=lambda row: (row[0], _TELLING.index(row[1])))

        return await self.database.read(work)

    async def pending_deliveries(self, limit: int = 50) -> list[tuple[DeliveryRecord, EventRecord]]:
        """The pending deliveries, the next one due first, each with its event: what is
        queued, when it is tried next, and why (its last error)."""
        query = (
            select(deliveries, events)
            .join(events, events.c.id == deliveries.c.event_id)
            .where(deliveries.c.state == PENDING)
            .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
            .limit(limit)
        )

        def work(conn: Connection) -> list[tuple[DeliveryRecord, EventRecord]]:
            found = []
            for row in conn.execute(query).all():
                delivery_columns = {c.name: row[i] for i, c in enumerate(deliveries.c)}
                event_columns = {c.name: row[len(deliveries.c) + i] for i, c in enumerate(events.c)}
                found.append((delivery_of(delivery_columns), event_of(event_columns)))
            return found

        return await self.database.read(work)

    async def replay(self, delivery_id: str, *, new_run: bool = False) -> DeliveryRecord:
        """Make a delivered or dead delivery pending again, due now, with a fresh budget.

        It keeps its idempotency key (Prefect answers with the run it already made, if
        any) unless ``new_run`` asks for a new key, and so a new flow run. Raises
        :class:`DeliveryNotFound` or :class:`DeliveryStillPending`.
        """
        now = self.clock()

        def work(conn: Connection) -> DeliveryRecord:
            row = conn.execute(
                select(deliveries).where(deliveries.c.id == delivery_id)
            ).one_or_none()
            if row is None:
                raise DeliveryNotFound(delivery_id)
            if row.state == PENDING:
                raise DeliveryStillPending(delivery_id)
            changes: dict[str, Any] = {
                "state": PENDING,
                "attempts_before_replay": row.attempts,  # a fresh budget; the count goes on
                "window_started_at": now,
                "next_attempt_at": now,
                "lease_owner": None,
                "lease_expires_at": None,
                "finished_at": None,
                # Followed afresh once delivered again (the same run, or a new one).
                **NOT_FOLLOWED,
            }
            if new_run:
                changes |= {
                    "idempotency_key": replay_key(row.idempotency_key),
                    "flow_run_id": None,
                    "flow_run_url": None,
                }
            updated = conn.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery_id, deliveries.c.state != PENDING)
                .values(**changes)
                .returning(*deliveries.c)
            ).one_or_none()
            if updated is None:  # replayed by another process since we read it
                raise DeliveryStillPending(delivery_id)
            refresh_state(conn, delivery_id)
            return delivery_of(updated._mapping)

        return await self.database.run(work)

    async def prune(self, older_than: float, batch: int = PRUNE_BATCH) -> int:
        """Delete finished events received before ``older_than``, in batches; dead
        letters stay. Then give the space back (:mod:`app.storage.maintenance`)."""
        removed = await prune_finished(self.database, older_than, batch)
        if removed:
            await reclaim_space(self.database)
        return removed


HOUR = 3600.0
_TELLING = (EventState.IGNORED, EventState.DELIVERED, EventState.PENDING, EventState.DEAD)


def _hour_of(received_at: ColumnElement[float], dialect: str) -> ColumnElement[float]:
    """The clock hour a time falls in, counted from the epoch. SQLite has no floor()
    unless built with its math functions; a cast truncates, which is the floor for any
    time after 1970. PostgreSQL's cast would round, so it takes floor()."""
    if dialect == "sqlite":
        return cast(received_at / HOUR, Integer)
    return func.floor(received_at / HOUR)


def replay_key(key: str) -> str:
    """A new idempotency key derived from the original: ``<key>:replay-<8 hex>``."""
    return f"{_REPLAY_SUFFIX.sub('', key)}:replay-{uuid.uuid4().hex[:8]}"


def nothing_to_replay(event: EventRecord, found: list[DeliveryRecord]) -> str | None:
    """Why an event has nothing to replay (the admin API and the CLI say it alike): it
    made no delivery, or every one is still pending (retried by itself); None when it
    has something."""
    if not found:
        return f"nothing to replay: the event was ignored: {event.ignored_reason or 'no route'}"
    if all(d.state is DeliveryState.PENDING for d in found):
        return "nothing to replay: every delivery is still pending: each is retried by itself"
    return None

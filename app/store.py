"""The durable store: events, their deliveries (one per event and route) and every attempt.

SQLAlchemy 2 core, one code path for SQLite (WAL, one replica) and PostgreSQL
(asyncpg, any number of replicas). An event and its deliveries are committed in
one transaction before the webhook answers; a repeated ``execution_id`` is
caught by a unique constraint (insert-or-ignore), never by check-then-insert.
Deliveries are claimed with a lease, so a delivery held by a process that died
is picked up again once the lease runs out, by this process or another replica.

Dialect-specific SQL only where it buys correctness: ``ON CONFLICT`` (both
dialects spell it alike), ``FOR UPDATE SKIP LOCKED`` on PostgreSQL's claims (so
replicas claiming at once never wait on, or take, each other's rows), and the
locks that serialise schema changes (SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's
transaction-scoped advisory lock).
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.database import (
    StoreUnavailable as StoreUnavailable,  # the store's one error, re-exported
)
from app.database import (
    attempts,
    deliveries,
    events,
    meta,
    metadata,
    open_engine,
)
from app.settings import Durability

T = TypeVar("T")
SCHEMA_VERSION = 1
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
EVENT_STATES = ("pending", "delivered", "dead", "ignored")
_REPLAY_SUFFIX = re.compile(r":replay-[0-9a-f]{8}$")
# pg_advisory_xact_lock key that serialises schema creation and upgrades between
# replicas starting at once (any constant; this one spells "EPBS" in ASCII).
MIGRATION_LOCK_KEY = 0x45504253


@dataclass(frozen=True)
class EventRecord:
    id: str
    execution_id: str
    received_at: float
    job_id: str | None
    schema_name: str | None
    table_name: str | None
    status: str | None
    payload: dict[str, Any]
    ignored_reason: str | None


@dataclass(frozen=True)
class DeliveryRecord:
    id: str
    event_id: str
    route: str
    connection: str
    idempotency_key: str
    state: str
    attempts: int
    created_at: float
    window_started_at: float
    next_attempt_at: float
    lease_owner: str | None
    lease_expires_at: float | None
    flow_run_id: str | None
    flow_run_url: str | None
    last_status_code: int | None
    last_error: str | None
    finished_at: float | None


@dataclass(frozen=True)
class AttemptRecord:
    id: int
    delivery_id: str
    number: int
    started_at: float
    duration_ms: float
    outcome: str
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    retry_in: float | None


@dataclass(frozen=True)
class NewDelivery:
    route: str
    connection: str
    idempotency_key: str


@dataclass(frozen=True)
class Recorded:
    """The stored event and its deliveries; ``created`` is False for a repeated execution id."""

    event: EventRecord
    deliveries: list[DeliveryRecord]
    created: bool


@dataclass(frozen=True)
class Claim:
    """A delivery this process holds the lease on, with the event it carries."""

    delivery: DeliveryRecord
    event: EventRecord


def new_id() -> str:
    return uuid.uuid4().hex


class Store:
    """Every read and write the service makes. Errors surface as :class:`StoreUnavailable`.

    Each operation is one function of a blocking SQLAlchemy connection, run in one
    transaction by :meth:`run`: on SQLite in the store's own thread (one hop to it per
    transaction, where an asyncio driver makes one per statement and fetch), on
    PostgreSQL through asyncpg (``run_sync``). The statements of the hot path are built
    once, with their values bound at execution.
    """

    def __init__(self, engine: AsyncEngine | Engine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self._writer = None if isinstance(engine, AsyncEngine) else _Writer(engine)
        self._closed = False
        dialect_insert = postgresql.insert if self.postgres else sqlite.insert
        self._insert_event = (
            dialect_insert(events)
            .on_conflict_do_nothing(index_elements=["execution_id"])
            .returning(events.c.id)
        )
        due = (
            select(deliveries.c.id)
            .where(
                deliveries.c.state == PENDING,
                deliveries.c.connection == bindparam("b_connection"),
                deliveries.c.next_attempt_at <= bindparam("b_now"),
                or_(
                    deliveries.c.lease_expires_at.is_(None),
                    deliveries.c.lease_expires_at < bindparam("b_now"),
                ),
                deliveries.c.id.not_in(bindparam("b_exclude", expanding=True)),
            )
            .order_by(deliveries.c.next_attempt_at, deliveries.c.created_at)
            .limit(bindparam("b_limit"))
        )
        if self.postgres:
            # Replicas claiming at once skip each other's rows instead of waiting for
            # them (and re-checking them after): each due delivery goes to one of them.
            # SQLite needs none: BEGIN IMMEDIATE makes the whole claim exclusive.
            due = due.with_for_update(skip_locked=True)
        self._claim = (
            update(deliveries)
            .where(deliveries.c.id.in_(due.scalar_subquery()))
            .values(
                lease_owner=bindparam("b_owner"),
                lease_expires_at=bindparam("b_expires"),
                attempts=deliveries.c.attempts + 1,
            )
            .returning(*deliveries.c)
        )
        upsert = dialect_insert(meta)
        self._set_meta = upsert.on_conflict_do_update(
            index_elements=[meta.c.key], set_={"value": upsert.excluded.value}
        )

    @classmethod
    async def open(
        cls,
        url: str,
        durability: Durability = Durability.CRASH,
        *,
        lock_timeout: float = 5.0,
        pool_size: int = 5,
        pool_timeout: float = 10.0,
    ) -> Store:
        """Open the store ``url`` names (SQLite or PostgreSQL) and create or upgrade its
        schema. ``pool_size`` and ``pool_timeout`` apply to PostgreSQL; SQLite keeps one
        connection."""
        store = cls(open_engine(url, durability, lock_timeout, pool_size, pool_timeout))
        try:
            await store.run(store._migrate)
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        self._closed = True
        if isinstance(self.engine, AsyncEngine):
            await self.engine.dispose()
            return
        assert self._writer is not None
        await asyncio.wrap_future(self._writer.stop())

    async def run(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` in one transaction: committed when it returns, rolled back
        when it raises. The store's LookupError and ValueError pass through."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        try:
            if isinstance(self.engine, AsyncEngine):
                async with self.engine.begin() as conn:
                    return await conn.run_sync(work)
            assert self._writer is not None
            return await asyncio.wrap_future(self._writer.submit(work))
        except (SQLAlchemyError, OSError) as exc:  # OSError: refused, reset, timed out
            raise StoreUnavailable(_describe(exc)) from exc
        except Exception as exc:
            # A driver error SQLAlchemy did not wrap (asyncpg raises some while it
            # connects); the store's own LookupError and ValueError pass through.
            if type(exc).__module__.partition(".")[0] in _DRIVER_MODULES:
                raise StoreUnavailable(_describe(exc)) from exc
            raise

    def _migrate(self, conn: Connection) -> None:
        if self.postgres:
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
        # Version 0 is an empty database; later versions add their steps here.
        metadata.create_all(conn, checkfirst=True)
        conn.execute(self._set_meta, {"key": "schema_version", "value": str(SCHEMA_VERSION)})

    async def check_writable(self) -> None:
        """Commit a real write, so readiness means 'an event can be stored now'. An
        upsert: probes of several replicas at once must not collide on the key."""
        probe = {"key": "ready_probe", "value": str(time.time())}
        await self.run(lambda conn: conn.execute(self._set_meta, probe))

    # -- ingest ---------------------------------------------------------------------------

    async def record_event(
        self,
        execution_id: str,
        payload: dict[str, Any],
        *,
        job_id: str | None,
        schema_name: str | None,
        table_name: str | None,
        status: str | None,
        new_deliveries: Sequence[NewDelivery],
        ignored_reason: str | None,
        claim_for: str | None = None,
        lease_seconds: float = 0.0,
    ) -> Recorded:
        """Store the event and its deliveries in one transaction, or find the earlier one.

        With ``claim_for``, new deliveries are born leased to that owner (their first
        attempt counted), so the caller can try them at once without a second claim.
        """
        now = time.time()
        event_id = new_id()
        row = {
            "id": event_id,
            "execution_id": execution_id,
            "received_at": now,
            "job_id": job_id,
            "schema_name": schema_name,
            "table_name": table_name,
            "status": status,
            "payload": json.dumps(payload, separators=(",", ":"), ensure_ascii=False),
            "ignored_reason": ignored_reason,
        }
        rows = [
            {
                "id": new_id(),
                "event_id": event_id,
                "route": new.route,
                "connection": new.connection,
                "idempotency_key": new.idempotency_key,
                "state": PENDING,
                "attempts": 1 if claim_for else 0,
                "created_at": now,
                "window_started_at": now,
                "next_attempt_at": now,
                "lease_owner": claim_for,
                "lease_expires_at": now + lease_seconds if claim_for else None,
                "flow_run_id": None,
                "flow_run_url": None,
                "last_status_code": None,
                "last_error": None,
                "finished_at": None,
            }
            for new in new_deliveries
        ]

        def work(conn: Connection) -> Recorded | None:
            if conn.scalar(self._insert_event, row) is None:
                earlier = conn.execute(_EVENT_BY_EXECUTION, {"b_execution_id": execution_id})
                return _with_deliveries(conn, earlier.one(), created=False)
            if rows:
                conn.execute(_INSERT_DELIVERY, rows)
            return None

        earlier = await self.run(work)
        if earlier is not None:
            return earlier
        return Recorded(_event(row), [_delivery(r) for r in rows], created=True)

    # -- dispatch -------------------------------------------------------------------------

    async def claim_due(
        self,
        owner: str,
        connection: str,
        limit: int,
        lease_seconds: float,
        exclude: Sequence[str] = (),
    ) -> list[Claim]:
        """Lease up to ``limit`` due deliveries of one connection, oldest first, leaving
        out ``exclude`` (the deliveries this process is working on already)."""
        if limit <= 0:
            return []
        now = time.time()
        params = {
            "b_connection": connection,
            "b_now": now,
            "b_exclude": list(exclude),
            "b_limit": limit,
            "b_owner": owner,
            "b_expires": now + lease_seconds,
        }

        def work(conn: Connection) -> list[Claim]:
            claimed = conn.execute(self._claim, params).all()
            if not claimed:
                return []
            event_ids = {row.event_id for row in claimed}
            found = conn.execute(_EVENTS_BY_ID, {"b_ids": list(event_ids)})
            by_id = {row.id: _event(row._mapping) for row in found}
            return [Claim(_delivery(row._mapping), by_id[row.event_id]) for row in claimed]

        claims = await self.run(work)
        claims.sort(key=lambda c: (c.delivery.next_attempt_at, c.delivery.created_at))
        return claims

    async def complete_attempt(
        self,
        delivery: DeliveryRecord,
        owner: str,
        *,
        started_at: float,
        duration_ms: float,
        outcome: str,
        status_code: int | None,
        error: str | None,
        response_excerpt: str | None,
        retry_in: float | None,
        changes: dict[str, Any],
    ) -> bool:
        """Record the attempt and apply ``changes`` if we still hold the lease.

        Returns False when the lease was lost (another process took the delivery over):
        the attempt is still recorded, the delivery's state is left to its new holder.
        """
        attempt = {
            "delivery_id": delivery.id,
            "number": delivery.attempts,
            "started_at": started_at,
            "duration_ms": duration_ms,
            "outcome": outcome,
            "status_code": status_code,
            "error": error,
            "response_excerpt": response_excerpt,
            "retry_in": retry_in,
        }
        # The SET clause is the columns named here (the statement is compiled once per
        # set of names); b_id and b_owner are the WHERE clause's.
        values = {"lease_owner": None, "lease_expires_at": None, **changes}

        def work(conn: Connection) -> bool:
            conn.execute(_INSERT_ATTEMPT, attempt)
            result = conn.execute(_IF_HELD, {"b_id": delivery.id, "b_owner": owner, **values})
            return bool(result.rowcount == 1)

        return await self.run(work)

    async def renew(self, delivery_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend our lease before sending (a delivery may wait for its turn); False when
        the lease is no longer ours: then another process has it and we must not send."""
        renewal = update(deliveries).where(
            deliveries.c.id == delivery_id,
            deliveries.c.lease_owner == owner,
            deliveries.c.state == PENDING,
        )
        expires = {"lease_expires_at": time.time() + lease_seconds}
        result = await self.run(lambda conn: conn.execute(renewal, expires))
        return bool(result.rowcount == 1)

    async def release(
        self, owner: str, delivery_ids: Sequence[str], *, untried: bool = False
    ) -> None:
        """Give leases back (on shutdown, or when a delivery was not tried after all) so
        they are picked up at once; ``untried`` also returns the attempt its claim counted."""
        if not delivery_ids:
            return
        values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
        if untried:
            values["attempts"] = deliveries.c.attempts - 1
        given_back = (
            update(deliveries)
            .where(deliveries.c.id.in_(delivery_ids), deliveries.c.lease_owner == owner)
            .values(**values)
        )
        await self.run(lambda conn: conn.execute(given_back))

    async def resume(self, connection: str) -> int:
        """Make every pending delivery of a connection due now (it has recovered);
        the claim order then drains them oldest first."""
        now = time.time()
        due_now = (
            update(deliveries)
            .where(
                deliveries.c.state == PENDING,
                deliveries.c.connection == connection,
                deliveries.c.next_attempt_at > now,
            )
            .values(next_attempt_at=now)
        )
        result = await self.run(lambda conn: conn.execute(due_now))
        return int(result.rowcount)

    # -- inspection and replay ------------------------------------------------------------

    async def get_event(self, event_id: str) -> tuple[EventRecord, list[DeliveryRecord]] | None:
        def work(conn: Connection) -> tuple[EventRecord, list[DeliveryRecord]] | None:
            row = conn.execute(select(events).where(events.c.id == event_id)).one_or_none()
            if row is None:
                return None
            found = _with_deliveries(conn, row, created=False)
            return found.event, found.deliveries

        return await self.run(work)

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        query = select(deliveries).where(deliveries.c.id == delivery_id)
        row = await self.run(lambda conn: conn.execute(query).one_or_none())
        return _delivery(row._mapping) if row is not None else None

    async def attempts_of(self, delivery_ids: Sequence[str]) -> list[AttemptRecord]:
        query = (
            select(attempts)
            .where(attempts.c.delivery_id.in_(delivery_ids))
            .order_by(attempts.c.delivery_id, attempts.c.id)
        )
        found = await self.run(lambda conn: conn.execute(query).all())
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
        rows = await self.run(lambda conn: conn.execute(query).all())
        return {row[0]: (int(row[1]), float(row[2])) for row in rows}

    async def list_events(
        self,
        *,
        state: str | None = None,
        job_id: str | None = None,
        table_name: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: tuple[float, str] | None = None,
        limit: int = 50,
    ) -> list[tuple[EventRecord, list[DeliveryRecord]]]:
        """Newest first; ``before`` is the (received_at, id) cursor of the previous page."""
        query = select(events)
        if job_id is not None:
            query = query.where(events.c.job_id == job_id)
        if table_name is not None:
            query = query.where(events.c.table_name == table_name)
        if since is not None:
            query = query.where(events.c.received_at >= since)
        if until is not None:
            query = query.where(events.c.received_at < until)
        if before is not None:
            received_at, last_id = before
            query = query.where(
                or_(
                    events.c.received_at < received_at,
                    and_(events.c.received_at == received_at, events.c.id < last_id),
                )
            )
        if state is not None:
            query = query.where(_event_state_condition(state))
        query = query.order_by(events.c.received_at.desc(), events.c.id.desc()).limit(limit)

        def work(conn: Connection) -> list[tuple[EventRecord, list[DeliveryRecord]]]:
            rows = conn.execute(query).all()
            found = conn.execute(
                select(deliveries)
                .where(deliveries.c.event_id.in_([row.id for row in rows]))
                .order_by(deliveries.c.route)
            )
            by_event: dict[str, list[DeliveryRecord]] = {}
            for d in found:
                by_event.setdefault(d.event_id, []).append(_delivery(d._mapping))
            return [(_event(row._mapping), by_event.get(row.id, [])) for row in rows]

        return await self.run(work)

    async def replay(self, delivery_id: str, *, new_run: bool = False) -> DeliveryRecord:
        """Make a delivered or dead delivery pending again, due now, with a fresh budget.

        It keeps its idempotency key (Prefect answers with the run it already made, if
        any) unless ``new_run`` asks for a new key, and so a new flow run.
        Raises LookupError when it does not exist, ValueError when it is still pending.
        """
        now = time.time()

        def work(conn: Connection) -> DeliveryRecord:
            row = conn.execute(
                select(deliveries).where(deliveries.c.id == delivery_id)
            ).one_or_none()
            if row is None:
                raise LookupError(delivery_id)
            if row.state == PENDING:
                raise ValueError("the delivery is still pending: it is retried by itself")
            changes: dict[str, Any] = {
                "state": PENDING,
                "attempts": 0,
                "window_started_at": now,
                "next_attempt_at": now,
                "lease_owner": None,
                "lease_expires_at": None,
                "finished_at": None,
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
                raise ValueError("the delivery is still pending: it is retried by itself")
            return _delivery(updated._mapping)

        return await self.run(work)

    async def prune(self, older_than: float, batch: int = 500) -> int:
        """Delete finished events received before ``older_than``; dead letters stay."""
        unfinished = exists().where(
            deliveries.c.event_id == events.c.id, deliveries.c.state.in_((PENDING, DEAD))
        )
        chosen = (
            select(events.c.id)
            .where(events.c.received_at < older_than, ~unfinished)
            .limit(batch)
            .scalar_subquery()
        )
        removal = delete(events).where(events.c.id.in_(chosen))
        removed = 0
        while True:  # in batches, so no transaction holds the write lock for long
            count = await self.run(lambda conn: int(conn.execute(removal).rowcount))
            removed += count
            if count < batch:
                return removed


# The hot path's statements, built once; b_* are the WHERE clause's parameters.
_INSERT_DELIVERY = insert(deliveries)
_INSERT_ATTEMPT = insert(attempts)
_IF_HELD = update(deliveries).where(
    deliveries.c.id == bindparam("b_id"), deliveries.c.lease_owner == bindparam("b_owner")
)
_EVENTS_BY_ID = select(events).where(events.c.id.in_(bindparam("b_ids", expanding=True)))
_EVENT_BY_EXECUTION = select(events).where(events.c.execution_id == bindparam("b_execution_id"))
_DELIVERIES_OF = (
    select(deliveries)
    .where(deliveries.c.event_id == bindparam("b_event_id"))
    .order_by(deliveries.c.route)
)


class _Writer:
    """SQLite's one thread: it runs the store's transactions one after another, and what
    arrived while one ran it commits together (group commit), so a burst of webhooks
    pays for one BEGIN IMMEDIATE and one COMMIT between many. Should one work in such a
    group fail, the group is rolled back and each work runs again on its own, so a
    failure is only ever its own (each work is a function of the connection alone)."""

    GROUP = 64  # the most works committed together

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: queue.SimpleQueue[tuple[Callable[[Connection], Any], Future[Any]] | None]
        self._queue = queue.SimpleQueue()
        self._stopped: Future[None] = Future()
        self._closing = False
        threading.Thread(target=self._serve, name="bridge-sqlite", daemon=True).start()

    def submit(self, work: Callable[[Connection], T]) -> Future[T]:
        if self._closing:
            raise StoreUnavailable("the store is closed")
        done: Future[T] = Future()
        self._queue.put((work, done))
        return done

    def stop(self) -> Future[None]:
        """Finish what was submitted, close the connection; done when closed."""
        self._closing = True
        self._queue.put(None)
        return self._stopped

    def _serve(self) -> None:
        try:
            stopping = False
            while not stopping:
                group = [self._queue.get()]
                while len(group) < self.GROUP:
                    try:
                        group.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stopping = None in group
                running = [
                    item
                    for item in group
                    if item is not None and item[1].set_running_or_notify_cancel()
                ]
                if not self._together(running):
                    for item in running:
                        self._together([item])
        finally:
            self.engine.dispose()
            self._stopped.set_result(None)

    def _together(self, group: list[tuple[Callable[[Connection], Any], Future[Any]]]) -> bool:
        """Run ``group`` in one transaction and settle its futures; False, settling
        none, when it failed with more than one work in it."""
        if not group:
            return True
        try:
            with self.engine.begin() as conn:
                results = [work(conn) for work, _ in group]
        except BaseException as exc:  # whatever it is, the thread lives on to serve the rest
            if len(group) > 1:
                return False
            group[0][1].set_exception(exc)
            return True
        for (_, done), result in zip(group, results, strict=True):
            done.set_result(result)
        return True


def _with_deliveries(conn: Connection, event_row: Any, *, created: bool) -> Recorded:
    found = conn.execute(_DELIVERIES_OF, {"b_event_id": event_row.id})
    return Recorded(
        _event(event_row._mapping), [_delivery(d._mapping) for d in found], created=created
    )


def replay_key(key: str) -> str:
    """A new idempotency key derived from the original: ``<key>:replay-<8 hex>``."""
    return f"{_REPLAY_SUFFIX.sub('', key)}:replay-{uuid.uuid4().hex[:8]}"


def _event_state_condition(state: str) -> Any:
    def has(*states: str) -> Any:
        return exists().where(deliveries.c.event_id == events.c.id, deliveries.c.state.in_(states))

    match state:
        case "pending":
            return has(PENDING)
        case "dead":
            return has(DEAD)
        case "delivered":
            return and_(has(DELIVERED), ~has(PENDING, DEAD))
        case "ignored":
            return ~has(PENDING, DELIVERED, DEAD)
    raise ValueError(f"state must be one of {', '.join(EVENT_STATES)}")


def _event(row: Any) -> EventRecord:
    values = dict(row)
    payload = values.pop("payload")
    return EventRecord(
        payload=json.loads(payload) if isinstance(payload, str) else payload, **values
    )


def _delivery(row: Any) -> DeliveryRecord:
    return DeliveryRecord(**dict(row))


_DRIVER_MODULES = frozenset({"asyncpg", "sqlite3"})


def _describe(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    # asyncpg's errors arrive wrapped twice (SQLAlchemy's adapter, then DBAPIError).
    original = getattr(original, "__cause__", None) or original
    return f"{type(original).__name__}: {original}".strip()

"""The store's queries: events, their deliveries (one per event and route) and every attempt.

SQLAlchemy 2 core, one code path for SQLite (one replica) and PostgreSQL (any number
of replicas); :mod:`app.storage.database` runs each operation as one transaction. An event
and its deliveries are committed together before the webhook answers; a repeated
``execution_id`` is caught by a unique constraint (insert-or-ignore), never by
check-then-insert. Deliveries are claimed with a lease, so a delivery held by a
process that died is picked up again once the lease runs out, by this process or
another replica. Every time comes from the store's ``clock`` (tests move it by hand).

Dialect-specific SQL only where it buys correctness: ``ON CONFLICT``, and ``FOR UPDATE
SKIP LOCKED`` on PostgreSQL's claims (so replicas claiming at once never wait on, or
take, each other's rows).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.engine import Connection

from app.ids import new_id
from app.storage.database import Database, sqlite_sql
from app.storage.event_state import initial_state, refresh_state
from app.storage.records import (
    AttemptRecord,
    Claim,
    DeliveryRecord,
    DeliveryState,
    DeliveryUpdate,
    EventRecord,
    NewEvent,
    Recorded,
    RunState,
)
from app.storage.schema import attempts, deliveries, events, meta
from app.storage.sets import join_sets

Clock = Callable[[], float]  # epoch seconds
PENDING, DELIVERED, DEAD = (s.value for s in DeliveryState)


class Store:
    """The reads and writes of one event's path: recorded, claimed, attempted. A store that
    cannot be used raises :class:`app.storage.records.StoreUnavailable`."""

    def __init__(self, database: Database, clock: Clock = time.time) -> None:
        self.database = database
        self.clock = clock
        self._insert_event = (
            database.insert(events)
            .on_conflict_do_nothing(index_elements=["execution_id"])
            .returning(events.c.id)
        )
        # On SQLite the two inserts of every webhook go straight to the driver's cursor,
        # as the SQL SQLAlchemy compiles for them: its execution path (compiled cache,
        # parameter processing, result proxy) cost more than the inserts themselves,
        # in the writer thread that shares the GIL with the event loop.
        self._raw_inserts = (
            None
            if database.postgres
            else (sqlite_sql(self._insert_event), sqlite_sql(_INSERT_DELIVERY))
        )
        # And so do each attempt's two statements: its record, and the delivery's state.
        self._raw_attempt = None if database.postgres else sqlite_sql(_INSERT_ATTEMPT)
        self._raw_if_held: dict[tuple[str, ...], str] = {}  # per set of columns it sets
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
        if database.postgres:
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
        upsert = database.insert(meta)
        self._set_meta = upsert.on_conflict_do_update(
            index_elements=[meta.c.key], set_={"value": upsert.excluded.value}
        )

    async def check_writable(self) -> None:
        """Commit a real write, so readiness means 'an event can be stored now'. An
        upsert: probes of several replicas at once must not collide on the key."""
        probe = {"key": "ready_probe", "value": str(self.clock())}
        await self.database.run(lambda conn: conn.execute(self._set_meta, probe))

    # -- ingest ---------------------------------------------------------------------------

    async def record_event(
        self, new: NewEvent, *, claim_for: str | None = None, lease_seconds: float = 0.0
    ) -> Recorded:
        """Store the event and its deliveries in one transaction, or find the earlier one.

        With ``claim_for``, new deliveries are born leased to that owner (their first
        attempt counted), so the caller can try them at once without a second claim.
        """
        now = self.clock()
        event_id = new_id(now)
        row = {
            "id": event_id,
            "execution_id": new.execution_id,
            "received_at": now,
            "job_id": new.job_id,
            "schema_name": new.schema_name,
            "table_name": new.table_name,
            "status": new.status,
            "payload": json.dumps(new.payload, separators=(",", ":"), ensure_ascii=False),
            "ignored_reason": new.ignored_reason,
            "state": initial_state(len(new.deliveries)),
        }
        rows = [
            {
                "id": new_id(now),
                "event_id": event_id,
                "route": delivery.route,
                "connection": delivery.connection,
                "idempotency_key": delivery.idempotency_key,
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
                "ordinal": ordinal,
                "attempts_before_replay": 0,
                **NOT_FOLLOWED,
            }
            for ordinal, delivery in enumerate(new.deliveries)
        ]

        def work(conn: Connection) -> Recorded:
            if not self._inserted(conn, row, rows):
                earlier = conn.execute(_EVENT_BY_EXECUTION, {"b_execution_id": new.execution_id})
                return with_deliveries(conn, earlier.one(), created=False)
            # The sets it joins, and the windows it completes, commit with it or not at all.
            joined, closed = (
                join_sets(conn, new.execution_id, new.sets, now) if new.sets else ([], [])
            )
            made = [delivery_of(r) for r in rows]
            return Recorded(event_of(row), made, created=True, joined=joined, closed=closed)

        return await self.database.run(work)

    def _inserted(
        self, conn: Connection, event: dict[str, Any], rows: list[dict[str, Any]]
    ) -> bool:
        """Insert the event and, if it is new, its deliveries; False when its execution
        id was stored before (nothing is written then)."""
        if self._raw_inserts is None:
            if conn.scalar(self._insert_event, event) is None:
                return False
            if rows:
                conn.execute(_INSERT_DELIVERY, rows)
            return True
        insert_event, insert_delivery = self._raw_inserts
        driver = conn.connection.driver_connection
        assert driver is not None
        # fetchall, not fetchone: the INSERT ... RETURNING runs to its end here, never left
        # pending under the group's COMMIT.
        if not driver.execute(insert_event, event).fetchall():
            return False
        driver.executemany(insert_delivery, rows)
        return True

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
        now = self.clock()
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
            by_id = {row.id: event_of(row._mapping) for row in found}
            return [Claim(delivery_of(row._mapping), by_id[row.event_id]) for row in claimed]

        claims = await self.database.run(work)
        claims.sort(key=lambda c: (c.delivery.next_attempt_at, c.delivery.created_at))
        return claims

    async def complete_attempt(
        self, attempt: AttemptRecord, update: DeliveryUpdate, owner: str
    ) -> bool:
        """Record the attempt and apply ``update`` to its delivery if ``owner`` still holds
        the lease. Returns False when the lease was lost (another process took the
        delivery over): the attempt is still recorded, the delivery is left to its new
        holder."""
        row = {
            "delivery_id": attempt.delivery_id,
            "number": attempt.number,
            "started_at": attempt.started_at,
            "duration_ms": attempt.duration_ms,
            "outcome": attempt.outcome,
            "status_code": attempt.status_code,
            "error": attempt.error,
            "response_excerpt": attempt.response_excerpt,
            "retry_in": attempt.retry_in,
        }
        # The SET clause is the columns named here (the statement is compiled once per
        # set of names); b_id and b_owner are the WHERE clause's.
        held = {"b_id": attempt.delivery_id, "b_owner": owner}
        values = {"lease_owner": None, "lease_expires_at": None, **update.columns()}

        ends = update.state is not DeliveryState.PENDING  # the event's state may change

        def work(conn: Connection) -> bool:
            if self._raw_attempt is None:
                conn.execute(_INSERT_ATTEMPT, row)
                applied = conn.execute(_IF_HELD, held | values).rowcount == 1
            else:
                driver = conn.connection.driver_connection
                assert driver is not None
                driver.execute(self._raw_attempt, row)
                sql = self._if_held_sql(tuple(values))
                applied = driver.execute(sql, held | values).rowcount == 1
            if applied and ends:
                refresh_state(conn, attempt.delivery_id)
            return bool(applied)

        return bool(await self.database.run(work))

    def _if_held_sql(self, names: tuple[str, ...]) -> str:
        sql = self._raw_if_held.get(names)
        if sql is None:
            sql = sqlite_sql(_IF_HELD.values({name: bindparam(name) for name in names}))
            self._raw_if_held[names] = sql
        return sql

    async def renew(self, delivery_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend our lease before sending (a delivery may wait for its turn); False when
        the lease is no longer ours: then another process has it and we must not send."""
        renewal = update(deliveries).where(
            deliveries.c.id == delivery_id,
            deliveries.c.lease_owner == owner,
            deliveries.c.state == PENDING,
        )
        expires = {"lease_expires_at": self.clock() + lease_seconds}
        result = await self.database.run(lambda conn: conn.execute(renewal, expires))
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
        await self.database.run(lambda conn: conn.execute(given_back))

    async def resume(self, connection: str) -> int:
        """Make every pending delivery of a connection due now (it has recovered);
        the claim order then drains them oldest first."""
        now = self.clock()
        due_now = (
            update(deliveries)
            .where(
                deliveries.c.state == PENDING,
                deliveries.c.connection == connection,
                deliveries.c.next_attempt_at > now,
            )
            .values(next_attempt_at=now)
        )
        result = await self.database.run(lambda conn: conn.execute(due_now))
        return int(result.rowcount)


# The hot path's statements, built once; b_* are the WHERE clause's parameters.
_INSERT_DELIVERY = insert(deliveries)
_INSERT_ATTEMPT = insert(attempts).values(
    {c.name: bindparam(c.name) for c in attempts.c if c.name != "id"}
)
_IF_HELD = update(deliveries).where(
    deliveries.c.id == bindparam("b_id"), deliveries.c.lease_owner == bindparam("b_owner")
)
_EVENTS_BY_ID = select(events).where(events.c.id.in_(bindparam("b_ids", expanding=True)))
_EVENT_BY_EXECUTION = select(events).where(events.c.execution_id == bindparam("b_execution_id"))
# One order everywhere (the first answer's, a duplicate's, the history's): as routed.
DELIVERY_ORDER = (deliveries.c.ordinal, deliveries.c.route)
_DELIVERIES_OF = (
    select(deliveries)
    .where(deliveries.c.event_id == bindparam("b_event_id"))
    .order_by(*DELIVERY_ORDER)
)


def with_deliveries(conn: Connection, event_row: Any, *, created: bool) -> Recorded:
    found = conn.execute(_DELIVERIES_OF, {"b_event_id": event_row.id})
    return Recorded(
        event_of(event_row._mapping), [delivery_of(d._mapping) for d in found], created=created
    )


def event_of(row: Any) -> EventRecord:
    values = dict(row)
    payload = values.pop("payload")
    values.pop("state", None)  # summed up from the deliveries wherever it is shown
    return EventRecord(
        payload=json.loads(payload) if isinstance(payload, str) else payload, **values
    )


# A delivery's run, as followed (app.delivery.follow): none yet, on a new or a replayed one.
NOT_FOLLOWED = dict.fromkeys(
    (
        "run_state",
        "run_state_at",
        "run_started_at",
        "run_ended_at",
        "follow_due_at",
        "follow_owner",
    )
)


def delivery_of(row: Any) -> DeliveryRecord:
    values = dict(row)
    run = values.get("run_state")
    return DeliveryRecord(
        **values
        | {"state": DeliveryState(values["state"]), "run_state": RunState(run) if run else None}
    )

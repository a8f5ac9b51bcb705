"""The follower's queries (app.delivery.follow) and what operators read of them: flow runs
claimed for a look at Prefect (leased like deliveries, so replicas never ask for one run
at once and a dead replica's runs are taken over, but only once a read found one due),
each change recorded on its delivery, the day's runs by final state, the freshness
histogram per route and the runs followed.

Every query is planned on one of schema's partial indexes (``FOLLOW_INDEXES``), on the
events' key (those of runs that ended) or on the freshness table's hour, so none reads
more than the runs followed or a day's rows.
"""

from __future__ import annotations

import bisect
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.engine import Connection

from app.storage.database import Database
from app.storage.records import FINAL_RUN_STATES, RunState
from app.storage.schema import deliveries, events, run_freshness
from app.storage.store import Clock

# Seconds from a table landing to its run's end: the console's p50/p95 and /metrics'
# histogram share these upper bounds (the last bucket has none).
FRESHNESS_BUCKETS = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)
FROM_FINISH, FROM_RECEIPT = "finish", "receipt"
HOUR = 3600


@dataclass(frozen=True)
class Followed:
    """A flow run this process holds the follow lease on."""

    delivery_id: str
    event_id: str  # its event's :class:`Origin`, read only once the run ended
    flow_run_id: str
    route: str
    connection: str
    run_state: RunState | None
    delivered_at: float  # when the run was made (or found)


@dataclass(frozen=True)
class Origin:
    """What an ended run's freshness needs of its event: when it arrived, and its body
    (Erathos's finish time, or a set's loads)."""

    received_at: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class Freshness:
    """One run's end, measured: seconds from Erathos's finish (None: the event has no
    finish time) and from the webhook's receipt."""

    route: str
    ended_at: float
    from_finish: float | None
    from_receipt: float


@dataclass(frozen=True)
class RunSeen:
    """What Prefect said of one run (``state`` GONE: it has no such run any more), when
    it is asked for next (None: no more) and, once it ended, its freshness."""

    delivery_id: str
    state: RunState
    state_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    due_at: float | None = None
    freshness: Freshness | None = None


def bucket_of(seconds: float) -> int:
    """The histogram bucket ``seconds`` falls in: the first whose bound it does not pass."""
    return bisect.bisect_left(FRESHNESS_BUCKETS, seconds)


class Runs:
    """Flow runs followed to their end. Raises StoreUnavailable when the store cannot be used."""

    def __init__(self, database: Database, clock: Clock = time.time) -> None:
        self.database = database
        self.clock = clock
        # Both on the followed index: (connection, follow_due_at), its rows the runs followed.
        due = select(deliveries.c.id).where(
            deliveries.c.connection == bindparam("b_connection"),
            deliveries.c.follow_due_at.is_not(None),
            deliveries.c.follow_due_at <= bindparam("b_now"),
        )
        self._any_due = due.limit(1)
        claimable = due.order_by(deliveries.c.follow_due_at).limit(bindparam("b_limit"))
        if database.postgres:
            claimable = claimable.with_for_update(skip_locked=True)  # replicas skip each other's
        # Claimed: due again only once the lease has run out (its holder died, say).
        self._claim = (
            update(deliveries)
            .where(deliveries.c.id.in_(claimable.scalar_subquery()))
            .values(follow_owner=bindparam("b_owner"), follow_due_at=bindparam("b_expires"))
            .returning(
                deliveries.c.id,
                deliveries.c.event_id,
                deliveries.c.flow_run_id,
                deliveries.c.route,
                deliveries.c.connection,
                deliveries.c.run_state,
                deliveries.c.finished_at,
            )
        )
        upsert = database.insert(run_freshness)
        self._count_freshness = upsert.on_conflict_do_update(
            index_elements=[c for c in run_freshness.primary_key.columns],
            set_={"runs": run_freshness.c.runs + 1},
        )

    async def any_due(self, connection: str) -> bool:
        """Whether any of a connection's runs is due for a look: a read, beside the writes,
        so that a round with nothing due (most of them) takes no writer's turn and no
        lock. Another replica may claim them meanwhile: :meth:`claim` is what decides."""
        params = {"b_connection": connection, "b_now": self.clock()}
        found = await self.database.read(lambda conn: conn.execute(self._any_due, params).first())
        return found is not None

    async def claim(self, owner: str, connection: str, limit: int, lease: float) -> list[Followed]:
        """Lease up to ``limit`` of a connection's runs due for a look, the most overdue
        first: one UPDATE, nothing else read in its transaction."""
        now = self.clock()
        params = {
            "b_connection": connection,
            "b_now": now,
            "b_limit": limit,
            "b_owner": owner,
            "b_expires": now + lease,
        }

        def work(conn: Connection) -> list[Followed]:
            return [
                Followed(
                    row.id,
                    row.event_id,
                    str(row.flow_run_id),
                    row.route,
                    row.connection,
                    RunState(row.run_state) if row.run_state else None,
                    float(row.finished_at or now),
                )
                for row in conn.execute(self._claim, params)
            ]

        return await self.database.run(work)

    async def origins(self, event_ids: Sequence[str]) -> dict[str, Origin]:
        """The events of runs that ended, by id (a pruned one is missing): read after
        Prefect answered, on the reads' path, never inside a claim."""
        if not event_ids:
            return {}
        query = select(events.c.id, events.c.received_at, events.c.payload).where(
            events.c.id.in_(set(event_ids))
        )
        rows = await self.database.read(lambda conn: conn.execute(query).all())
        return {row.id: Origin(float(row.received_at), json.loads(row.payload)) for row in rows}

    async def record(self, owner: str, seen: Sequence[RunSeen]) -> list[RunSeen]:
        """Store what Prefect said, in one transaction: each run's state and next look,
        and the freshness of those that ended. Only the runs ``owner`` still holds are
        changed (another replica took over the others); returns those."""

        def work(conn: Connection) -> list[RunSeen]:
            recorded = []
            for run in seen:
                values: dict[str, Any] = {
                    "run_state": run.state.value,
                    "follow_owner": None,
                    "follow_due_at": run.due_at,
                }
                for name in ("state_at", "started_at", "ended_at"):
                    if (value := getattr(run, name)) is not None:
                        values[f"run_{name}"] = value
                if run.state is RunState.GONE:
                    values["run_state_at"] = self.clock()
                held = update(deliveries).where(
                    deliveries.c.id == run.delivery_id, deliveries.c.follow_owner == owner
                )
                if conn.execute(held.values(**values)).rowcount != 1:
                    continue
                recorded.append(run)
                if (fresh := run.freshness) is not None:
                    self._count(conn, fresh)
            return recorded

        return await self.database.run(work)

    def _count(self, conn: Connection, fresh: Freshness) -> None:
        hour = int(fresh.ended_at // HOUR)
        measured = {FROM_RECEIPT: fresh.from_receipt, FROM_FINISH: fresh.from_finish}
        for basis, seconds in measured.items():
            if seconds is not None:
                key = {"route": fresh.route, "hour": hour, "basis": basis}
                counted = key | {"bucket": bucket_of(seconds), "runs": 1}
                conn.execute(self._count_freshness, counted)

    async def release(self, owner: str, delivery_ids: Sequence[str], due_at: float | None) -> None:
        """Give runs back unasked (Prefect did not answer), due again at ``due_at``; None:
        no longer followed (they stay as last seen)."""
        if not delivery_ids:
            return
        given_back = (
            update(deliveries)
            .where(deliveries.c.id.in_(delivery_ids), deliveries.c.follow_owner == owner)
            .values(follow_owner=None, follow_due_at=due_at)
        )
        await self.database.run(lambda conn: conn.execute(given_back))

    async def stop_following(self) -> int:
        """No run is followed any more (BRIDGE_FOLLOW_RUNS is off): each keeps its state as
        last seen, and nothing claims to follow it. Returns how many were followed."""
        stopped = (
            update(deliveries)
            .where(deliveries.c.follow_due_at.is_not(None))
            .values(follow_owner=None, follow_due_at=None)
        )
        return int(await self.database.run(lambda conn: conn.execute(stopped).rowcount))

    async def followed(self) -> dict[str, int]:
        """Per connection, the runs still followed (the gauge), on the followed index."""
        query = (
            select(deliveries.c.connection, func.count())
            .where(deliveries.c.follow_due_at.is_not(None))
            .group_by(deliveries.c.connection)
        )
        rows = await self.database.read(lambda conn: conn.execute(query).all())
        return {row[0]: int(row[1]) for row in rows}

    async def final_counts(self, since: float) -> dict[RunState, int]:
        """Runs that reached a final state (or were found gone) at or after ``since``: the
        states of the day's range of ``run_state_at``, the final ones kept here (a
        condition on the state would let the planner read every final run ever kept)."""
        query = (
            select(deliveries.c.run_state, func.count())
            .where(deliveries.c.run_state_at >= since)
            .group_by(deliveries.c.run_state)
        )
        rows = await self.database.read(lambda conn: conn.execute(query).all())
        counted = {RunState(row[0]): int(row[1]) for row in rows}
        return {state: count for state, count in counted.items() if state in FINAL_RUN_STATES}

    async def freshness(self, since: float) -> dict[tuple[str, str], list[int]]:
        """Per (route, basis), the runs in each bucket that ended in the hours from the
        one ``since`` falls in (at most a day's rows per route)."""
        query = (
            select(
                run_freshness.c.route,
                run_freshness.c.basis,
                run_freshness.c.bucket,
                func.sum(run_freshness.c.runs),
            )
            .where(run_freshness.c.hour >= int(since // HOUR))
            .group_by(run_freshness.c.route, run_freshness.c.basis, run_freshness.c.bucket)
        )
        rows = await self.database.read(lambda conn: conn.execute(query).all())
        found: dict[tuple[str, str], list[int]] = {}
        for route, basis, bucket, runs in rows:
            counts = found.setdefault((route, basis), [0] * (len(FRESHNESS_BUCKETS) + 1))
            counts[int(bucket)] += int(runs)
        return found

    async def prune(self, older_than: float) -> int:
        """Forget freshness counted in hours before ``older_than``."""
        removal = delete(run_freshness).where(run_freshness.c.hour < int(older_than // HOUR))
        return int(await self.database.run(lambda conn: conn.execute(removal).rowcount))


def percentile(counts: Sequence[int], fraction: float) -> float | None:
    """The ``fraction`` quantile of a bucketed histogram, interpolated inside its bucket
    as Prometheus's histogram_quantile does; infinite when it falls past the last bound
    (it is only known to be longer); None when it counts nothing."""
    total = sum(counts)
    if total == 0:
        return None
    rank = fraction * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index == len(FRESHNESS_BUCKETS):
                return math.inf
            lower = FRESHNESS_BUCKETS[index - 1] if index else 0.0
            upper = FRESHNESS_BUCKETS[index]
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return math.inf

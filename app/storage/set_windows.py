"""What operators read of the sets (their open and past windows, and which a load is in),
and the deadlines' transactions, which :mod:`app.delivery.deadlines` runs on its timer:
each closes a set's windows whose deadline passed, under the set's lock
(:mod:`app.storage.sets`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select, union_all, update
from sqlalchemy.engine import Connection

from app.storage.database import Database
from app.storage.records import RunState, summed_run_state
from app.storage.schema import deliveries, set_loads, set_windows
from app.storage.sets import (
    Closed,
    Joined,
    SetPlan,
    Window,
    WindowState,
    close_window,
    latest_window,
    loads_of,
    lock_set,
    open_window,
    window_of,
)


@dataclass(frozen=True)
class WindowView:
    """A window as operators see it."""

    id: str
    set_name: str
    window: str
    state: WindowState
    starts_at: float
    deadline_at: float
    opened_at: float
    closed_at: float | None
    loads: list[dict[str, Any]]
    missing: list[str] = field(default_factory=list)
    event_id: str | None = None
    run_state: RunState | None = None  # its flow run's, as followed (None: no run, or not yet)


def _close_unconfigured(conn: Connection, name: str, window: Window, now: float) -> Closed:
    """A window of a set no longer in the routes file: closed late, with nothing made."""
    conn.execute(
        update(set_windows)
        .where(set_windows.c.id == window.id, set_windows.c.state == WindowState.OPEN.value)
        .values(state=WindowState.LATE.value, closed_at=now, missing="[]")
    )
    return Closed(name, window.window, True, False, [], [], None)


def _in_order(loads: dict[str, dict[str, Any]], members: Sequence[str]) -> list[dict[str, Any]]:
    """The loads in the order of the set's members (as ``${{set.loads}}`` lists them),
    those of members no longer in the set last."""
    rank = {member: index for index, member in enumerate(members)}
    ordered = sorted(loads.items(), key=lambda item: rank.get(item[0], len(rank)))
    return [{"member": member, **load} for member, load in ordered]


# The most ids one statement binds: a page is at most this many windows (the API's limit),
# and SQLite allows 32766 parameters, older builds 999.
IDS_PER_STATEMENT = 500
SETS_PER_STATEMENT = 200  # the sets whose newest windows one statement reads


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    return (ids[at : at + IDS_PER_STATEMENT] for at in range(0, len(ids), IDS_PER_STATEMENT))


def _loads_of_windows(conn: Connection, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each window's loads by member, one query per 500 windows (on the loads'
    ``(window_id, member)`` index), not one per window."""
    found: dict[str, dict[str, Any]] = {window_id: {} for window_id in ids}
    for chunk in _chunks(ids):
        query = (
            select(set_loads.c.window_id, set_loads.c.member, set_loads.c.load)
            .where(set_loads.c.window_id.in_(chunk))
            .order_by(set_loads.c.id)
        )
        for row in conn.execute(query):
            found[row.window_id][row.member] = json.loads(row.load)
    return found


def _run_states(conn: Connection, event_ids: Sequence[str]) -> dict[str, RunState | None]:
    """The state of the flow run each closed window's event made, as the events pages sum
    it up: one query per 500 windows (on the deliveries' event index), not one per window."""
    found: dict[str, list[RunState]] = {event_id: [] for event_id in event_ids}
    for chunk in _chunks(event_ids):
        query = select(deliveries.c.event_id, deliveries.c.run_state).where(
            deliveries.c.event_id.in_(chunk), deliveries.c.run_state.is_not(None)
        )
        for row in conn.execute(query):
            found[row.event_id].append(RunState(row.run_state))
    return {event_id: summed_run_state(states) for event_id, states in found.items()}


def _views(
    conn: Connection, rows: Sequence[Any], members: Mapping[str, Sequence[str]]
) -> list[WindowView]:
    """A page of windows as operators see them, in the order of ``rows``: two queries
    per 500 windows after the windows' own (their loads, their runs' states), never one
    per window. An open window's missing members are those of ``members`` not loaded yet."""
    loads = _loads_of_windows(conn, [row.id for row in rows])
    states = _run_states(conn, [row.event_id for row in rows if row.event_id is not None])
    found = []
    for row in rows:
        loaded = loads[row.id]
        if row.state == WindowState.OPEN.value:
            missing = [m for m in members.get(row.set_name, ()) if m not in loaded]
        else:
            missing = json.loads(row.missing) if row.missing else []
        found.append(
            WindowView(
                id=row.id,
                set_name=row.set_name,
                window=row.window_key,
                state=WindowState(row.state),
                starts_at=row.starts_at,
                deadline_at=row.deadline_at,
                opened_at=row.opened_at,
                closed_at=row.closed_at,
                loads=_in_order(loaded, members.get(row.set_name, ())),
                missing=missing,
                event_id=row.event_id,
                run_state=None if row.event_id is None else states[row.event_id],
            )
        )
    return found


class SetWindows:
    """The deadlines' transactions (:mod:`app.delivery.deadlines` runs them) and what
    operators read of the sets: their open and past windows."""

    def __init__(self, database: Database, clock: Callable[[], float]) -> None:
        self.database = database
        self.clock = clock

    async def fire_due(self, plans: Mapping[str, SetPlan]) -> list[Closed]:
        """Close every open window whose deadline has passed, late; each set in a
        transaction of its own, under its lock (a replica that got there first leaves
        the others nothing to close)."""
        now = self.clock()
        due_sets = (
            select(set_windows.c.set_name)
            .where(set_windows.c.state == WindowState.OPEN.value, set_windows.c.deadline_at <= now)
            .distinct()
        )
        names = await self.database.run(lambda conn: list(conn.scalars(due_sets)))
        closed: list[Closed] = []
        for name in sorted(names):

            def fire(conn: Connection, name: str = name) -> list[Closed]:
                lock_set(conn, name)
                due = conn.execute(
                    select(set_windows).where(
                        set_windows.c.set_name == name,
                        set_windows.c.state == WindowState.OPEN.value,
                        set_windows.c.deadline_at <= now,
                    )
                )
                plan = plans.get(name)
                return [
                    close_window(conn, plan, w, now, late=True)
                    if plan is not None
                    else _close_unconfigured(conn, name, w, now)
                    for w in map(window_of, due.all())
                ]

            closed += await self.database.run(fire)
        return closed

    async def prune(self, older_than: float) -> int:
        """Delete the windows closed before ``older_than`` (with their loads): their
        events are pruned by the same retention."""
        closed = delete(set_windows).where(
            set_windows.c.state != WindowState.OPEN.value, set_windows.c.closed_at < older_than
        )
        return int(await self.database.run(lambda conn: conn.execute(closed).rowcount))

    async def open_daily(self, plans: Sequence[SetPlan]) -> int:
        """Open today's window of each daily set that has none open, so its deadline
        passes even when no member loads at all (and says so: every member missing)."""
        now = self.clock()
        opened = 0
        for plan in plans:
            if not plan.window.daily:
                continue

            def ensure(conn: Connection, plan: SetPlan = plan) -> int:
                latest = latest_window(conn, plan.name)
                if latest is not None and latest.state is WindowState.OPEN:
                    return 0
                lock_set(conn, plan.name)
                latest = latest_window(conn, plan.name)
                if latest is not None and latest.state is WindowState.OPEN:
                    return 0
                open_window(conn, plan, now, latest)
                return 1

            opened += await self.database.run(ensure)
        return opened

    async def windows(
        self,
        members: Mapping[str, Sequence[str]],
        *,
        open_only: bool = False,
        set_name: str | None = None,
        limit: int = 50,
    ) -> list[WindowView]:
        """Windows, newest first, with their loads; an open window's missing members are
        those of ``members`` (each set's, as configured now) that have not loaded yet."""
        query = select(set_windows).order_by(
            set_windows.c.opened_at.desc(), set_windows.c.starts_at.desc()
        )
        if open_only:
            query = query.where(set_windows.c.state == WindowState.OPEN.value)
        if set_name is not None:
            query = query.where(set_windows.c.set_name == set_name)

        page = query.limit(limit)
        return await self.database.read(
            lambda conn: _views(conn, conn.execute(page).all(), members)
        )

    async def recent(
        self, members: Mapping[str, Sequence[str]], names: Sequence[str], per_set: int
    ) -> dict[str, list[WindowView]]:
        """Each named set's ``per_set`` newest windows, newest first (its open window
        first, when it has one): the console's page and the CLI's ``sets``, in three
        queries for up to 200 sets and 500 windows, each set's windows read on its own
        index."""
        newest = [
            select(set_windows)
            .where(set_windows.c.set_name == name)
            .order_by(set_windows.c.opened_at.desc(), set_windows.c.starts_at.desc())
            .limit(per_set)
            .subquery()
            for name in names
        ]
        # SQLite takes no LIMIT on a member of a UNION (each set's is a subquery), and
        # at most 500 members in one.
        compounds = [
            union_all(*(select(each) for each in newest[at : at + SETS_PER_STATEMENT]))
            for at in range(0, len(newest), SETS_PER_STATEMENT)
        ]

        def read(conn: Connection) -> list[WindowView]:
            rows = [row for compound in compounds for row in conn.execute(compound)]
            return _views(conn, rows, members)

        found: dict[str, list[WindowView]] = {name: [] for name in names}
        for view in await self.database.read(read):
            found[view.set_name].append(view)
        for views in found.values():
            views.sort(key=lambda v: (v.opened_at, v.starts_at), reverse=True)
        return found

    async def joined_by(self, execution_id: str, plans: Mapping[str, SetPlan]) -> list[Joined]:
        """The windows a load is (still) in: what a redelivered webhook's answer repeats."""
        query = (
            select(set_windows, set_loads.c.member)
            .join(set_loads, set_loads.c.window_id == set_windows.c.id)
            .where(set_loads.c.execution_id == execution_id)
            .order_by(set_windows.c.set_name)
        )

        def read(conn: Connection) -> list[Joined]:
            found: dict[tuple[str, str], list[Any]] = {}
            for row in conn.execute(query):
                found.setdefault((row.set_name, row.id), []).append(row)
            joined = []
            for (name, window_id), rows in found.items():
                row = rows[0]
                state = WindowState(row.state)
                if state is WindowState.OPEN:
                    members = plans[name].members if name in plans else ()
                    present = loads_of(conn, window_id)
                    missing = tuple(m for m in members if m not in present)
                else:
                    missing = tuple(json.loads(row.missing or "[]"))
                members_of = tuple(r.member for r in rows)
                joined.append(
                    Joined(name, row.window_key, members_of, state, row.deadline_at, missing)
                )
            return joined

        return await self.database.run(read)

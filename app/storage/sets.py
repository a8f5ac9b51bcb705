"""Sets of tables, durably: each set's windows, the load each member made in them, and
the closing of a window (complete, or late at its deadline) into one event whose
deliveries (the set's flow run keyed ``set:<name>:<window>``, its Prefect events) the
dispatcher then makes like any other.

A window closes at most once: in the transaction that stores the load completing it,
or in the one that finds its deadline passed, both under the set's lock (a PostgreSQL
advisory lock; SQLite's ``BEGIN IMMEDIATE`` is one already), so concurrent loads and
replicas see one another's members and exactly one of them closes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from app.ids import new_id
from app.storage.records import NewDelivery
from app.storage.schema import deliveries, dialect_insert, events, set_loads, set_windows

SETS_LOCK_KEY = 0x45505354  # pg_advisory_xact_lock(key, hashtext(set name)): "EPST"
SET_EVENT = "set"  # the payload key of a window's event; its execution id: set/<name>/<window>


def set_execution_id(name: str, window: str) -> str:
    """What a window's event is stored under: no Erathos execution id has a ``/``."""
    return f"{SET_EVENT}/{name}/{window}"


class WindowState(StrEnum):
    OPEN = "open"
    COMPLETED = "completed"
    LATE = "late"


@dataclass(frozen=True)
class Placed:
    """Where a window is: its id (``set.window``), its start and its deadline (epoch s)."""

    key: str
    starts_at: float
    deadline_at: float


class WindowRule(Protocol):
    """A set's kind of window (app.routing.windows)."""

    @property
    def daily(self) -> bool: ...

    def next_window(self, now: float, after: Placed | None) -> Placed: ...


@dataclass(frozen=True)
class SetPlan:
    """A set as the store needs it: ``deliveries(window, late, run)`` are the deliveries
    of the window's event (its flow run when ``run``, and its Prefect events)."""

    name: str
    members: tuple[str, ...]
    window: WindowRule
    run_when_late: bool
    deliveries: Callable[[str, bool, bool], list[NewDelivery]]


@dataclass(frozen=True)
class SetJoin:
    """One load joining one set, as ``members`` (those it matches)."""

    plan: SetPlan
    members: tuple[str, ...]
    load: dict[str, Any]


@dataclass(frozen=True)
class Joined:
    """Which set and window a load joined, and where that window stands."""

    set_name: str
    window: str
    members: tuple[str, ...]
    state: WindowState
    deadline_at: float
    missing: tuple[str, ...]


@dataclass(frozen=True)
class Closed:
    """A window that closed: complete, or late at its deadline (with a run or not)."""

    set_name: str
    window: str
    late: bool
    run: bool
    loads: list[dict[str, Any]]
    missing: list[str]
    event_id: str | None


def lock_set(conn: Connection, name: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(SETS_LOCK_KEY, func.hashtext(name))))


def join_sets(
    conn: Connection, execution_id: str, joins: Sequence[SetJoin], now: float
) -> tuple[list[Joined], list[Closed]]:
    """In the load's own transaction: put the load in each set's current window (closing
    first a window whose deadline has passed), and close a window it completes."""
    joined: list[Joined] = []
    closed: list[Closed] = []
    for join in sorted(joins, key=lambda j: j.plan.name):  # one lock order: no deadlock
        plan = join.plan
        lock_set(conn, plan.name)
        window = latest_window(conn, plan.name)
        if window is not None and window.state is WindowState.OPEN and now >= window.deadline_at:
            closed.append(close_window(conn, plan, window, now, late=True))
            window = latest_window(conn, plan.name)
        if window is None or window.state is not WindowState.OPEN:
            window = open_window(conn, plan, now, window)
        load = json.dumps(join.load, separators=(",", ":"), ensure_ascii=False)
        replaced = {"execution_id": execution_id, "joined_at": now, "load": load}
        # One statement for all the members the load is (distinct: a set lists a member
        # once), the later load replacing an earlier one of the same member.
        rows = [{"window_id": window.id, "member": m, **replaced} for m in join.members]
        upsert = dialect_insert(conn.dialect, set_loads).values(rows)
        conn.execute(
            upsert.on_conflict_do_update(index_elements=["window_id", "member"], set_=replaced)
        )
        loads = loads_of(conn, window.id)
        missing = tuple(m for m in plan.members if m not in loads)
        state = WindowState.OPEN
        if not missing:
            closed.append(close_window(conn, plan, window, now, late=False, loaded=loads))
            state = WindowState.COMPLETED
        joined.append(
            Joined(plan.name, window.window, join.members, state, window.deadline_at, missing)
        )
    return joined, closed


@dataclass(frozen=True)
class Window:
    id: str
    window: str
    state: WindowState
    starts_at: float
    deadline_at: float


def window_of(row: Any) -> Window:
    return Window(row.id, row.window_key, WindowState(row.state), row.starts_at, row.deadline_at)


def latest_window(conn: Connection, name: str) -> Window | None:
    row = conn.execute(
        select(set_windows)
        .where(set_windows.c.set_name == name)
        .order_by(set_windows.c.starts_at.desc(), set_windows.c.opened_at.desc())
        .limit(1)
    ).first()
    return None if row is None else window_of(row)


def open_window(conn: Connection, plan: SetPlan, now: float, after: Window | None) -> Window:
    previous = None if after is None else Placed(after.window, after.starts_at, after.deadline_at)
    placed = plan.window.next_window(now, previous)
    window = Window(new_id(), placed.key, WindowState.OPEN, placed.starts_at, placed.deadline_at)
    conn.execute(
        insert(set_windows).values(
            id=window.id,
            set_name=plan.name,
            window_key=placed.key,
            state=WindowState.OPEN.value,
            starts_at=placed.starts_at,
            deadline_at=placed.deadline_at,
            opened_at=now,
        )
    )
    return window


def loads_of(conn: Connection, window_id: str) -> dict[str, dict[str, Any]]:
    """The window's loads by member."""
    found = conn.execute(
        select(set_loads.c.member, set_loads.c.load)
        .where(set_loads.c.window_id == window_id)
        .order_by(set_loads.c.id)
    )
    return {row.member: json.loads(row.load) for row in found}


def close_window(
    conn: Connection,
    plan: SetPlan,
    window: Window,
    now: float,
    *,
    late: bool,
    loaded: dict[str, dict[str, Any]] | None = None,
) -> Closed:
    """Close the window and store its event with its deliveries, in the caller's
    transaction (under the set's lock); ``loaded``: its loads by member, when the caller
    has just read them (:func:`loads_of`)."""
    by_member = loads_of(conn, window.id) if loaded is None else loaded
    loads = [{"member": m, **by_member[m]} for m in plan.members if m in by_member]
    missing = [m for m in plan.members if m not in by_member]
    run = not late or (plan.run_when_late and bool(loads))
    made = plan.deliveries(window.window, late, run)
    event_id = new_id()
    values = {
        "name": plan.name,
        "window": window.window,
        "late": late,
        "loads": loads,
        "missing": missing,
        "starts_at": window.starts_at,
        "deadline_at": window.deadline_at,
        "run": run,
    }
    reason = None
    if not made:
        reason = f"set {plan.name}, window {window.window}: late, and no run (when_late)"
    conn.execute(
        insert(events).values(
            id=event_id,
            execution_id=set_execution_id(plan.name, window.window),
            received_at=now,
            status=WindowState.LATE.value.upper() if late else WindowState.COMPLETED.value.upper(),
            payload=json.dumps({SET_EVENT: values}, separators=(",", ":"), ensure_ascii=False),
            ignored_reason=reason,
        )
    )
    if made:
        conn.execute(insert(deliveries), _delivery_rows(event_id, made, now))
    conn.execute(
        update(set_windows)
        .where(set_windows.c.id == window.id, set_windows.c.state == WindowState.OPEN.value)
        .values(
            state=(WindowState.LATE if late else WindowState.COMPLETED).value,
            closed_at=now,
            missing=json.dumps(missing),
            event_id=event_id,
        )
    )
    return Closed(plan.name, window.window, late, run, loads, missing, event_id)


def _delivery_rows(event_id: str, made: Sequence[NewDelivery], now: float) -> list[dict[str, Any]]:
    return [
        {
            "id": new_id(),
            "event_id": event_id,
            "route": delivery.route,
            "connection": delivery.connection,
            "idempotency_key": delivery.idempotency_key,
            "state": "pending",
            "attempts": 0,
            "created_at": now,
            "window_started_at": now,
            "next_attempt_at": now,
            "ordinal": ordinal,
            "attempts_before_replay": 0,
        }
        for ordinal, delivery in enumerate(made)
    ]

"""``sets``: each set of the routes file with its open window, from the store: what
arrived, what is missing, and the deadline (the admin API's ``GET /sets``, offline); and
its last closed window, with the state of the flow run it made."""

from __future__ import annotations

import json
import time

from app.config import Settings
from app.routing.router import Router
from app.routing.sets import members_of
from app.service import open_database
from app.storage.set_windows import SetWindows, WindowView
from app.storage.sets import WindowState
from app.times import iso_utc


async def show_sets(settings: Settings, router: Router, *, as_json: bool) -> int:
    if not router.sets:
        print('no sets: the routes file (BRIDGE_ROUTES_FILE) has no "sets"')
        return 0
    members = members_of(router.sets)
    database = await open_database(settings)
    windows = SetWindows(database, time.time)
    try:
        # Newest first: the open window (a set has one at most), then the last closed.
        names = [s.name for s in router.sets]
        recent = await windows.recent(members, names, per_set=2)
    finally:
        await database.close()
    open_windows: dict[str, WindowView | None] = {}
    last_closed: dict[str, WindowView | None] = {}
    for name, found in recent.items():
        open_windows[name] = next((w for w in found if w.state is WindowState.OPEN), None)
        last_closed[name] = next((w for w in found if w.state is not WindowState.OPEN), None)
    for table_set in router.sets:
        window = open_windows.get(table_set.name)
        last = last_closed[table_set.name]
        if as_json:
            shown = _as_json(table_set.name, members[table_set.name], window)
            print(json.dumps(shown | {"last_closed": _closed_json(last)}))
            continue
        print(
            f"{table_set.name}  {table_set.window.describe()}  when late: "
            f"{table_set.when_late}  -> {table_set.route.target.label}"
        )
        if last is not None:
            print(f"  last window {last.window}  {_outcome(last)}")
        if window is None:
            print("  no open window: the next member's load opens one")
            continue
        print(f"  window {window.window}  deadline {iso_utc(window.deadline_at)}")
        for load in window.loads:
            print(
                f"    arrived  {load['member']}  execution {load['execution_id']}  "
                f"rows {load['rows']}  status {load['status']}"
            )
        for member in window.missing:
            print(f"    missing  {member}")
    return 0


def _as_json(name: str, members: tuple[str, ...], window: WindowView | None) -> dict[str, object]:
    return {
        "set": name,
        "members": list(members),
        "window": None
        if window is None
        else {
            "window": window.window,
            "deadline": iso_utc(window.deadline_at),
            "loads": window.loads,
            "missing": window.missing,
        },
    }


def _outcome(window: WindowView) -> str:
    """A closed window in words: complete or late, and its run's state as followed."""
    closed = "late" if window.state is WindowState.LATE else "complete"
    if window.run_state is not None:
        return f"{closed}, run {window.run_state.value}"
    return f"{closed}, no run state yet" if window.event_id else closed


def _closed_json(window: WindowView | None) -> dict[str, object] | None:
    if window is None:
        return None
    return {
        "window": window.window,
        "state": window.state.value,
        "closed_at": iso_utc(window.closed_at) if window.closed_at is not None else None,
        "event_id": window.event_id,
        "run_state": window.run_state.value if window.run_state is not None else None,
    }

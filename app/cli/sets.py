"""``sets``: each set of the routes file with its open window, from the store: what
arrived, what is missing, and the deadline (the admin API's ``GET /sets``, offline)."""

from __future__ import annotations

import json
import time

from app.config import Settings
from app.routing.router import Router
from app.service import open_database
from app.storage.set_windows import SetWindows, WindowView
from app.times import iso_utc


async def show_sets(settings: Settings, router: Router, *, as_json: bool) -> int:
    if not router.sets:
        print('no sets: the routes file (BRIDGE_ROUTES_FILE) has no "sets"')
        return 0
    members = {s.name: tuple(m.text for m in s.members) for s in router.sets}
    database = await open_database(settings)
    try:
        found = await SetWindows(database, time.time).windows(members, open_only=True, limit=500)
    finally:
        await database.close()
    open_windows = {w.set_name: w for w in reversed(found)}
    for table_set in router.sets:
        window = open_windows.get(table_set.name)
        if as_json:
            print(json.dumps(_as_json(table_set.name, members[table_set.name], window)))
            continue
        print(
            f"{table_set.name}  {table_set.window.describe()}  when late: "
            f"{table_set.when_late}  -> {table_set.route.target.label}"
        )
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

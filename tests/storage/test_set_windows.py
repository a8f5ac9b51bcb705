"""What operators read of the sets' windows: a page of windows costs the same few
statements however long it is (the admin API, the console and the CLI list up to 500),
and each window of it still shows its own loads, missing members and run state."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.storage.database import Database
from app.storage.records import RunState
from app.storage.schema import deliveries
from app.storage.set_windows import SetWindows
from app.storage.sets import Closed
from app.storage.store import Store
from tests.support.statements import captured
from tests.support.stores import load_into, set_columns, set_plan
from tests.support.waiting import ManualClock

pytestmark = [pytest.mark.anyio, pytest.mark.every_database]

MEMBERS = {"shop": ("orders", "customers"), "ads": ("clicks",)}


async def closed_windows(store: Store, clock: ManualClock, name: str, count: int) -> None:
    """``count`` windows of the set, each completed by its loads."""
    plan = set_plan(name, MEMBERS[name])
    for _ in range(count):
        for member in plan.members:
            await load_into(store, plan, member)
        clock.advance(1)


async def run_of(database: Database, closed: Closed) -> str:
    """The id of the flow run delivery a window's closing made."""
    query = select(deliveries.c.id).where(deliveries.c.event_id == closed.event_id)
    [run_id] = await database.run(lambda conn: list(conn.scalars(query)))
    return str(run_id)


async def test_a_page_of_windows_is_read_in_three_statements_however_long(
    database: Database, store: Store, clock: ManualClock
) -> None:
    await closed_windows(store, clock, "shop", 12)
    windows = SetWindows(database, clock)

    with captured(database) as short:
        assert len(await windows.windows(MEMBERS, limit=2)) == 2
    with captured(database) as long:
        assert len(await windows.windows(MEMBERS, set_name="shop", limit=12)) == 12

    # The windows, their loads, their runs' states: never one more per window.
    assert (len(short), len(long)) == (3, 3)


async def test_each_sets_newest_windows_are_read_in_three_statements_however_many_sets(
    database: Database, store: Store, clock: ManualClock
) -> None:
    await closed_windows(store, clock, "shop", 4)
    await closed_windows(store, clock, "ads", 3)
    await load_into(store, set_plan("shop", MEMBERS["shop"]), "orders")  # an open window
    windows = SetWindows(database, clock)

    with captured(database) as statements:
        recent = await windows.recent(MEMBERS, ["shop", "ads", "none"], per_set=2)

    assert len(statements) == 3
    assert recent == {
        "shop": await windows.windows(MEMBERS, set_name="shop", limit=2),
        "ads": await windows.windows(MEMBERS, set_name="ads", limit=2),
        "none": [],
    }
    assert [w.state for w in recent["shop"]] == ["open", "completed"]


async def test_each_window_of_a_page_shows_its_own_loads_missing_members_and_run_state(
    database: Database, store: Store, clock: ManualClock
) -> None:
    shop = set_plan("shop", MEMBERS["shop"])
    await load_into(store, shop, "orders", rows=1)
    first = await load_into(store, shop, "customers", rows=2)
    clock.advance(1)
    await load_into(store, shop, "customers", rows=3)
    clock.advance(1)
    ads = await load_into(store, set_plan("ads", MEMBERS["ads"]), "clicks", rows=4)
    for recorded, state in ((first, RunState.COMPLETED), (ads, RunState.FAILED)):
        [closed] = recorded.closed
        await set_columns(
            database, deliveries, await run_of(database, closed), run_state=state.value
        )

    found = await SetWindows(database, clock).windows(MEMBERS)

    shown = [
        (w.set_name, w.state, [x["rows"] for x in w.loads], w.missing, w.run_state) for w in found
    ]
    assert shown == [
        ("ads", "completed", [4], [], RunState.FAILED),
        ("shop", "open", [3], ["orders"], None),
        ("shop", "completed", [1, 2], [], RunState.COMPLETED),
    ]


async def test_past_200_sets_the_newest_windows_take_one_more_statement(
    database: Database, store: Store, clock: ManualClock
) -> None:
    await closed_windows(store, clock, "shop", 2)
    names = [*(f"set-{n}" for n in range(200)), "shop"]  # SQLite's compound has a limit
    windows = SetWindows(database, clock)

    with captured(database) as statements:
        recent = await windows.recent(MEMBERS, names, per_set=1)

    assert len(statements) == 4
    assert recent["shop"] == await windows.windows(MEMBERS, set_name="shop", limit=1)
    assert sum(map(len, recent.values())) == 1


async def test_past_500_windows_their_loads_and_run_states_take_one_more_statement_each(
    database: Database, store: Store, clock: ManualClock
) -> None:
    """Ids are bound 500 to a statement (SQLite's older builds take 999 parameters): the
    oldest window, in the second part, still shows its own load and run state."""
    ads = set_plan("ads", MEMBERS["ads"])
    oldest = await load_into(store, ads, "clicks", rows=7)
    [closed] = oldest.closed
    await set_columns(database, deliveries, await run_of(database, closed), run_state="completed")
    clock.advance(1)
    await closed_windows(store, clock, "ads", 500)
    windows = SetWindows(database, clock)

    with captured(database) as statements:
        page = await windows.windows(MEMBERS, set_name="ads", limit=501)

    assert len(statements) == 5
    assert len(page) == 501
    assert all(len(w.loads) == 1 for w in page)
    assert (page[-1].loads[0]["rows"], page[-1].run_state) == (7, RunState.COMPLETED)
    assert {w.run_state for w in page[:-1]} == {None}

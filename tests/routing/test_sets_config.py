"""Sets in the routes file and in the store: a mistake stops start-up naming the set and
the field; members by table, by schema and table, or by job; the windows' edges (a load
at the deadline is the next window's, a late window closes before it opens the next);
what ``simulate``, ``check``, the CLI's ``sets`` and the console show."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from app.cli import erathos_template, main
from app.config import ConfigurationError, Settings
from app.intake.diagnose import simulate
from app.routing.event import ErathosEvent
from app.routing.routes_file import Routing, load_routes_file
from app.routing.sets import Member, joining
from app.routing.templates import template_lookup
from app.routing.windows import Daily, Within
from app.service import connect
from app.storage.database import Database
from app.storage.records import NewDelivery, NewEvent
from app.storage.schema import SCHEMA_VERSION, meta, set_loads, set_windows
from app.storage.set_windows import SetWindows
from app.storage.sets import Placed, SetJoin, SetPlan, WindowState
from app.storage.store import Store
from tests.support.console import sign_in
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.setfiles import load, send, windows
from tests.support.statements import listening, reading
from tests.support.stores import load_into, open_store, set_plan
from tests.support.tokens import ADMIN_TOKEN, auth
from tests.support.waiting import ManualClock
from tools.localprefect import PrefectServer

FLOW = "5d3c35a6-9b1e-4a0e-9a57-2f7f2bd1c0de"
JOB = "6b0f4a52-8d3e-4f5a-9c1b-2e7d8f9a0b1c"


def a_set(**fields: Any) -> dict[str, Any]:
    return {
        "name": "shop",
        "members": ["raw_shop.orders", "customers"],
        "window": {"within": "2h"},
        "flow_id": FLOW,
        **fields,
    }


def compiled(make_settings: SettingsFactory, tmp_path: Path, *sets: dict[str, Any]) -> Routing:
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"sets": list(sets)}))
    settings = make_settings(routes_file=path)
    return load_routes_file(path, settings, template_lookup(settings))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"members": []}, "sets[0] (shop).members: List should have at least 1 item"),
        ({"members": [".orders"]}, "sets[0] (shop).members: [0]: '.orders': write schema.table"),
        ({"members": ["job:not-a-uuid"]}, "a job member is job:<Erathos job id>"),
        ({"members": ["orders", "orders"]}, "a member is listed twice"),
        ({"window": {}}, 'sets[0] (shop).window: give "within" (2h)'),
        ({"window": {"within": "soon"}}, "sets[0] (shop).window.within: must be a duration"),
        ({"window": {"every": "day"}}, "sets[0] (shop).window.deadline"),
        ({"window": {"every": "day", "deadline": "7am"}}, "window.deadline: must be a time of day"),
        (
            {"window": {"every": "day", "deadline": "07:00", "timezone": "Mars/Olympus"}},
            "sets[0] (shop).window.timezone",
        ),
        ({"when_late": "maybe"}, "sets[0] (shop).when_late"),
        ({"deployment": "a/b"}, "sets[0] (shop): give exactly one target"),
        (
            {"flow_run": {"parameters": {"t": "${{erathos.table_name}}"}}},
            "sets[0] (shop).flow_run.parameters.t: ${{erathos.table_name}} names one load",
        ),
        (
            {"flow_run": {"name": "${{set.colour}}"}},
            "sets[0] (shop).flow_run.name: ${{set.colour}} is not a set's field",
        ),
        ({"rules": [{"variable_name": "ROWS", "operation": "LIKE", "value": "1"}]}, "rules[0]"),
        ({"colour": "red"}, "sets[0] (shop).colour: is not a known field"),
    ],
)
def test_a_mistake_in_a_set_stops_start_up_naming_the_set_and_the_field(
    make_settings: SettingsFactory, tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        compiled(make_settings, tmp_path, a_set(**fields))
    assert message in str(raised.value)


def test_two_sets_may_not_share_a_name(make_settings: SettingsFactory, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"sets\[1\] \(shop\).name: another set"):
        compiled(make_settings, tmp_path, a_set(), a_set())


def test_a_route_placeholder_is_refused_in_a_set_and_a_set_placeholder_in_a_route(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    path = tmp_path / "routes.json"
    route = {"name": "r", "flow_id": FLOW, "flow_run": {"name": "${{set.window}}"}}
    path.write_text(json.dumps({"routes": [route]}))
    settings = make_settings(routes_file=path)
    with pytest.raises(ConfigurationError, match=r"is only for a set's flow_run"):
        load_routes_file(path, settings, template_lookup(settings))


def event(**fields: Any) -> ErathosEvent:
    return ErathosEvent.model_validate({"execution_id": str(uuid.uuid4()), **fields})


def test_members_by_schema_and_table_by_table_in_any_schema_and_by_job() -> None:
    orders = event(schema_name="RAW_SHOP", table_name="Orders", job_id=JOB)
    elsewhere = event(schema_name="staging", table_name="orders")

    assert Member.parse("raw_shop.orders").matches(orders)  # names in any case
    assert not Member.parse("raw_shop.orders").matches(elsewhere)
    assert Member.parse("orders").matches(elsewhere)
    assert Member.parse(f"job:{JOB}").matches(orders)
    assert not Member.parse(f"job:{JOB}").matches(elsewhere)


def test_only_finished_loads_count_unless_the_set_says_otherwise(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    failed = event(schema_name="raw_shop", table_name="orders", status="FAILED")
    any_status = {"variable_name": "ROWS", "operation": "GREATER_THAN", "value": "-1"}
    router = compiled(
        make_settings, tmp_path, a_set(), a_set(name="all", rules=[any_status])
    ).router

    joined = router.decide(failed.model_copy(update={"rows": 1})).sets
    assert [s.table_set.name for s in joined] == ["all"]


SAO_PAULO = Daily(clock_time(7, 0), "America/Sao_Paulo")  # UTC-3: 07:00 there is 10:00 UTC


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("now", "window"),
    [
        ("2026-12-07T09:59:59", "2026-12-07"),  # before the deadline: today's window
        ("2026-12-07T10:00:00", "2026-12-08"),  # at the deadline: tomorrow's
        ("2026-12-07T02:00:00", "2026-12-07"),  # 23:00 the day before, local time
    ],
)
def test_a_daily_window_holds_the_loads_from_one_deadline_to_the_next(
    now: str, window: str
) -> None:
    placed = SAO_PAULO.next_window(utc(now), None)

    assert placed.key == window
    assert placed.deadline_at == utc(f"{window}T10:00:00")
    assert placed.deadline_at - placed.starts_at == 86400


def test_after_a_window_completed_the_next_load_is_the_next_windows() -> None:
    completed = Placed("2026-12-07", utc("2026-12-06T10:00:00"), utc("2026-12-07T10:00:00"))

    assert SAO_PAULO.next_window(utc("2026-12-07T08:00:00"), completed).key == "2026-12-08"


def test_a_within_window_is_named_by_its_opening_and_never_twice() -> None:
    rule = Within(7200)
    first = rule.next_window(utc("2026-12-07T04:05:06"), None)
    again = rule.next_window(first.starts_at, first)  # the clock has not moved

    assert first.key == "2026-12-07T04:05:06.000Z"
    assert first.deadline_at - first.starts_at == 7200
    assert again.key != first.key


def plan(members: tuple[str, ...], run_when_late: bool = True) -> SetPlan:
    return SetPlan("shop", members, Within(60), run_when_late, lambda w, late, run: [])


def new_load(table: str, set_plan: SetPlan) -> NewEvent:
    execution_id = str(uuid.uuid4())
    load = {"execution_id": execution_id, "table_name": table, "rows": 1}
    joins = [SetJoin(set_plan, (table,), load)]
    return NewEvent(execution_id=execution_id, payload={}, sets=joins)


@pytest.mark.anyio
@pytest.mark.every_database
async def test_a_load_at_the_deadline_closes_the_window_late_and_opens_the_next(
    store: Store, clock: ManualClock
) -> None:
    shop = plan(("orders", "customers"))
    first = await store.record_event(new_load("orders", shop))
    clock.advance(60)  # exactly the deadline: the timer has not run yet
    second = await store.record_event(new_load("customers", shop))

    [opened] = first.joined
    [late] = second.closed
    [joined] = second.joined
    assert late.window == opened.window
    assert late.late
    assert late.missing == ["customers"]
    assert late.run  # with what arrived: orders
    assert joined.window != opened.window
    assert joined.state is WindowState.OPEN
    assert joined.missing == ("orders",)


@pytest.mark.anyio
@pytest.mark.every_database
async def test_a_completed_window_is_closed_once_and_a_later_load_opens_the_next(
    store: Store,
) -> None:
    shop = plan(("orders", "customers"))
    await store.record_event(new_load("orders", shop))
    completing = await store.record_event(new_load("customers", shop))
    after = await store.record_event(new_load("orders", shop))

    [completed] = completing.closed
    assert not completed.late
    assert completed.missing == []
    assert [x["table_name"] for x in completed.loads] == ["orders", "customers"]
    assert after.closed == []
    assert after.joined[0].window != completed.window


@pytest.mark.anyio
@pytest.mark.every_database
async def test_a_load_completing_a_window_as_two_members_writes_and_reads_its_loads_once(
    store: Store,
) -> None:
    both = ("orders", "raw_shop.orders")  # a load of raw_shop.orders is both
    execution_id = str(uuid.uuid4())
    load = {"execution_id": execution_id, "table_name": "orders", "rows": 1}
    new = NewEvent(execution_id=execution_id, payload={}, sets=[SetJoin(plan(both), both, load)])
    on_loads: list[str] = []

    def keep(statement: str, _parameters: Any) -> None:
        if "set_loads" in statement:
            on_loads.append(statement.split()[0])

    with listening([store.database.engine], keep):
        recorded = await store.record_event(new)

    [completed] = recorded.closed
    assert [(x["member"], x["execution_id"]) for x in completed.loads] == [
        ("orders", execution_id),
        ("raw_shop.orders", execution_id),
    ]
    assert on_loads == ["INSERT", "SELECT"]  # not once per member, nor read again to close


def test_a_load_is_matched_to_a_set_once_and_joins_it_with_the_routers_one_plan(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    router = compiled(make_settings, tmp_path, a_set()).router
    orders = event(schema_name="raw_shop", table_name="orders", status="FINISHED", rows="5")

    decisions = [router.decide(orders) for _ in range(2)]
    joins = [joining(decision.sets, router.set_plans, orders) for decision in decisions]

    assert [[m.members for m in d.sets] for d in decisions] == [[("raw_shop.orders",)]] * 2
    assert [[j.members for j in each] for each in joins] == [[("raw_shop.orders",)]] * 2
    assert joins[0][0].plan is joins[1][0].plan is router.set_plans["shop"]


@pytest.mark.anyio
@pytest.mark.every_database
async def test_a_version_3_store_is_upgraded_with_the_sets_tables(database_url: str) -> None:
    database = await Database.open(database_url)

    def as_version_3(conn: Connection) -> None:
        set_loads.drop(conn)
        set_windows.drop(conn)
        conn.execute(update(meta).where(meta.c.key == "schema_version").values(value="3"))

    await database.run(as_version_3)
    await database.close()
    upgraded = await Database.open(database_url)
    try:
        store = Store(upgraded)
        await store.record_event(new_load("orders", plan(("orders",))))
        version = await upgraded.run(
            lambda conn: conn.scalar(select(meta.c.value).where(meta.c.key == "schema_version"))
        )
        closed = await upgraded.run(
            lambda conn: conn.scalar(select(func.count()).select_from(set_windows))
        )
    finally:
        await upgraded.close()

    assert version == str(SCHEMA_VERSION)
    assert closed == 1


@pytest.mark.anyio
async def test_closed_windows_are_pruned_with_the_events_retention(
    store: Store, clock: ManualClock
) -> None:
    shop = plan(("orders",))
    await store.record_event(new_load("orders", shop))  # completes its window at once
    windows = SetWindows(store.database, clock)

    assert await windows.prune(clock() - 1) == 0
    clock.advance(10)
    assert await windows.prune(clock() - 1) == 1
    assert await windows.windows({}) == []


ROUTES_WITH_A_SET = {
    "sets": [
        {
            "name": "shop",
            "members": ["raw_shop.orders", "raw_shop.customers"],
            "window": {"every": "day", "deadline": "07:00", "timezone": "America/Sao_Paulo"},
            "flow_id": FLOW,
            "flow_run": {"parameters": {"loads": "${{set.loads}}"}},
        }
    ]
}


@pytest.fixture
def set_settings(make_settings: SettingsFactory, tmp_path: Path) -> Settings:
    path = tmp_path / "routes.json"
    path.write_text(json.dumps(ROUTES_WITH_A_SET))
    return make_settings(routes_file=path, admin_token=ADMIN_TOKEN)


@pytest.mark.anyio
async def test_simulate_shows_the_sets_a_load_would_join(set_settings: Settings) -> None:
    assert set_settings.routes_file is not None
    routing = load_routes_file(
        set_settings.routes_file, set_settings, template_lookup(set_settings)
    )
    connections = {n: connect(s, set_settings) for n, s in routing.connections.items()}
    orders = event(schema_name="raw_shop", table_name="orders", status="FINISHED", rows="5")
    payments = event(schema_name="raw_shop", table_name="payments", status="FINISHED")

    shown = simulate(orders, routing.router, connections, template_lookup(set_settings))
    other = simulate(payments, routing.router, connections, template_lookup(set_settings))

    [joins] = shown["sets"]
    assert joins["joins"] is True
    assert joins["members"] == ["raw_shop.orders"]
    assert joins["load"]["rows"] == 5
    assert other["sets"] == [{"set": "shop", "joins": False, "reason": "not a member"}]


@pytest.mark.anyio
async def test_the_console_and_the_admin_api_show_the_open_window(set_settings: Settings) -> None:
    async with open_client(set_settings) as client:
        await send(client, load("orders", 5))
        listed = (await client.get("/sets", headers=auth(ADMIN_TOKEN))).json()
        signed = await client.post(
            "/ui/sign-in", data={"token": ADMIN_TOKEN}, headers={"Origin": "http://bridge"}
        )
        assert signed.status_code == 303
        page = await client.get("/ui/sets")

    [shop] = listed["sets"]
    assert shop["open_window"]["missing"] == ["raw_shop.customers"]
    assert [x["member"] for x in shop["open_window"]["loads"]] == ["raw_shop.orders"]
    assert page.status_code == 200
    assert "raw_shop.customers" in page.text
    assert "missing" in page.text


def test_the_cli_sets_shows_what_arrived_and_what_is_missing(
    cli_environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    path = tmp_path / "routes.json"
    path.write_text(json.dumps(ROUTES_WITH_A_SET))
    cli_environment.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    cli_environment.setenv("BRIDGE_ROUTES_FILE", str(path))

    assert main(["sets"]) == 0
    out = capsys.readouterr().out
    assert "shop  every day, deadline 07:00 America/Sao_Paulo" in out
    assert "no open window" in out
    assert main(["sets", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["members"] == ROUTES_WITH_A_SET["sets"][0]["members"]


@pytest.mark.anyio
async def test_the_sets_views_read_all_their_windows_loads_in_one_statement(
    make_settings: SettingsFactory,
    cli_environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    members = {"shop": ("raw_shop.orders", "raw_shop.customers"), "ads": ("raw_ads.clicks",)}
    path = tmp_path / "routes.json"
    document = {"sets": [a_set(name=n, members=list(m)) for n, m in members.items()]}
    path.write_text(json.dumps(document))
    settings = make_settings(routes_file=path, admin_token=ADMIN_TOKEN)
    store = await open_store(settings.database_url)
    try:
        for name, its_members in members.items():
            plan = set_plan(name, its_members)
            for _ in range(4):  # four completed windows
                for member in its_members:
                    await load_into(store, plan, member)
            await load_into(store, plan, its_members[0])  # and one more: shop's is open
    finally:
        await store.database.close()
    cli_environment.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    cli_environment.setenv("BRIDGE_ROUTES_FILE", str(path))

    async with open_client(settings) as client:
        await sign_in(client)
        with reading("set_loads") as by_api:
            answer = await client.get("/sets/shop/windows", headers=auth(ADMIN_TOKEN))
        with reading("set_loads") as by_sets:
            listed = await client.get("/sets", headers=auth(ADMIN_TOKEN))
        with reading("set_loads") as by_console:
            page = await client.get("/ui/sets")
    with reading("set_loads") as by_cli:
        assert await asyncio.to_thread(main, ["sets"]) == 0

    assert len(answer.json()["windows"]) == 5
    [shop, ads] = listed.json()["sets"]
    assert shop["open_window"]["missing"] == ["raw_shop.customers"]
    assert ads["open_window"] is None  # its one member completes each window at once
    assert page.text.count("complete</td>") == 9
    assert capsys.readouterr().out.count("last window") == 2
    # Once for the whole page, not once per window (nor per set).
    assert [len(by_api), len(by_sets), len(by_console), len(by_cli)] == [1, 1, 1, 1]


def test_check_renders_a_sets_parameters_against_the_deployments_schema(
    cli_environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    prefect: PrefectServer,
) -> None:
    flow_id = prefect.create_flow(f"set-{uuid.uuid4().hex[:8]}")
    schema = {
        "type": "object",
        "properties": {"loads": {"type": "array", "items": {"type": "object"}}},
        "required": ["loads"],
    }
    deployment = f"d-{uuid.uuid4().hex[:8]}"
    prefect.create_deployment(flow_id, deployment, parameter_openapi_schema=schema)
    flow = prefect.request("GET", f"flows/{flow_id}")["name"]
    good = {**ROUTES_WITH_A_SET["sets"][0], "deployment": f"{flow}/{deployment}"}
    del good["flow_id"]
    bad = {**good, "name": "bad", "flow_run": {"parameters": {"loads": "${{set.window}}"}}}
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"sets": [good, bad]}))
    cli_environment.setenv("PREFECT_API_URL", prefect.api_url)
    cli_environment.setenv("BRIDGE_ROUTES_FILE", str(path))

    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "set 'shop': ok" in out
    assert "set 'bad': FAILED: flow_run.parameters: loads: '2026-01-05' is not of type" in out


def test_with_a_set_the_erathos_template_names_no_jobs_and_only_shared_rules(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    finished = {"variable_name": "STATUS", "operation": "EQUAL", "value": "FINISHED"}
    rows = {"variable_name": "ROWS", "operation": "GREATER_THAN", "value": "0"}
    route = {"name": "r", "jobs": [JOB], "rules": [finished, rows], "flow_id": FLOW}
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"routes": [route], "sets": [a_set()]}))

    definition = erathos_template(make_settings(routes_file=path), "https://bridge.example.com")

    assert definition["jobs"] == ["<ERATHOS_JOB_ID>"]  # a set's tables may come from any job
    assert definition["rules"] == [finished]  # the set's default rule, shared with the route


@pytest.mark.anyio
async def test_members_landing_at_once_on_two_replicas_complete_each_window_once(
    make_settings: SettingsFactory, tmp_path: Path, postgres_url: str
) -> None:
    path = tmp_path / "routes.json"
    members = ["raw_shop.orders", "raw_shop.customers", "raw_shop.payments"]
    path.write_text(json.dumps({"sets": [a_set(members=members)]}))
    settings = make_settings(routes_file=path, database_url=postgres_url)
    rounds = 8

    async with open_client(settings) as one, open_client(settings) as other:
        answers = []
        for _ in range(rounds):
            bodies = [load("orders"), load("customers"), load("payments")]
            sent = [
                send(client, body) for client, body in zip((one, other, one), bodies, strict=True)
            ]
            answers += await asyncio.gather(*sent)

    states = Counter(answer["sets"][0]["state"] for answer in answers)
    assert states == {"open": 2 * rounds, "completed": rounds}
    windows = {answer["sets"][0]["window"] for answer in answers}
    assert len(windows) == rounds


@pytest.mark.anyio
@pytest.mark.every_database
async def test_a_daily_window_with_nothing_loaded_is_announced_late_with_no_run(
    store: Store, clock: ManualClock
) -> None:
    made: list[tuple[str, bool, bool]] = []

    def deliveries(window: str, late: bool, run: bool) -> list[NewDelivery]:
        made.append((window, late, run))
        return []

    daily = SetPlan("shop", ("orders", "customers"), SAO_PAULO, True, deliveries)
    windows = SetWindows(store.database, clock)

    assert await windows.open_daily([daily]) == 1
    assert await windows.open_daily([daily]) == 0  # one open window at a time
    [opened] = await windows.windows({"shop": daily.members})
    clock.now = opened.deadline_at
    [closed] = await windows.fire_due({"shop": daily})

    assert closed.late
    assert closed.missing == ["orders", "customers"]
    assert not closed.run  # nothing arrived: nothing to run on, even under "run"
    assert made == [(opened.window, True, False)]  # its Prefect events only
    assert await windows.fire_due({"shop": daily}) == []  # closed once


@pytest.mark.anyio
async def test_a_window_of_a_set_removed_from_the_routes_file_closes_with_nothing_made(
    store: Store, clock: ManualClock
) -> None:
    await store.record_event(new_load("orders", plan(("orders", "customers"))))
    clock.advance(60)

    [closed] = await SetWindows(store.database, clock).fire_due({})

    assert (closed.set_name, closed.late, closed.run, closed.event_id) == (
        "shop",
        True,
        False,
        None,
    )


@pytest.mark.anyio
async def test_a_completed_window_is_a_past_window_whose_event_the_console_shows(
    set_settings: Settings,
) -> None:
    async with open_client(set_settings) as client:
        await send(client, load("orders", 5))
        completing = await send(client, load("customers", 6))
        [window] = [w for w in await windows(client, "shop") if w["state"] != "open"]
        signed = await client.post(
            "/ui/sign-in", data={"token": ADMIN_TOKEN}, headers={"Origin": "http://bridge"}
        )
        assert signed.status_code == 303
        page = await client.get("/ui/sets")
        event_page = await client.get(f"/ui/events/{window['event_id']}")
        detail = await client.get(f"/events/{window['event_id']}", headers=auth(ADMIN_TOKEN))

    assert completing["sets"][0]["state"] == "completed"
    assert window["state"] == "completed"
    assert [x["rows"] for x in window["loads"]] == [5, 6]
    assert page.status_code == 200
    assert "complete</td>" in page.text
    assert event_page.status_code == 200
    assert f"set/shop/{window['window']}" in event_page.text
    [delivery] = detail.json()["deliveries"]
    assert delivery["route"] == "set:shop"
    assert detail.json()["payload"]["set"]["missing"] == []


def test_a_daily_window_follows_one_of_the_within_kind() -> None:
    """A set's window changed from "within" to daily: its latest stored window is keyed
    by a time, and the next daily window still opens (a load once answered 500 here)."""
    earlier = Within(3600).next_window(1_765_000_000.0, None)
    now = earlier.starts_at + 60
    placed = SAO_PAULO.next_window(now, earlier)
    assert placed.key == SAO_PAULO.day_of(now).isoformat()  # that day's window, not skipped
    again = SAO_PAULO.next_window(now, placed)  # after a daily window: the next day's
    assert again.key == (SAO_PAULO.day_of(now) + timedelta(days=1)).isoformat()

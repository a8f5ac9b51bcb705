"""Sets of tables against the real Prefect server, with the example flow served: the load
that completes a set's window makes exactly one COMPLETED run carrying every member's
load; a redelivered member makes nothing new; a member that loads twice in a window is
there once, with its later load."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.inprocess import SettingsFactory, open_client
from tests.support.setfiles import (
    SET_DEPLOYMENT,
    closed_window,
    finished_run,
    flow_log,
    load,
    runs_tagged,
    send,
    set_name,
    window_deliveries,
    windows,
    write_routes,
)
from tests.support.tokens import ADMIN_TOKEN
from tools.localprefect import PrefectServer, ServedFlow

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MEMBERS = ["raw_shop.orders", "raw_shop.customers", "raw_shop.payments"]


@pytest.fixture(scope="module")
def served(
    prefect: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedFlow]:
    """examples/flows/erathos_dbt.py served (its set deployment, erathos-set/example)."""
    home = tmp_path_factory.mktemp("flow-home")
    flow = ServedFlow(prefect, home=home, log_path=home / "flow.log")
    flow.start()
    try:
        yield flow
    finally:
        flow.stop()


async def test_three_members_land_and_make_exactly_one_completed_run_with_their_loads(
    make_settings: SettingsFactory, prefect: PrefectServer, served: ServedFlow, tmp_path: Path
) -> None:
    name = set_name()
    routes = write_routes(tmp_path / "routes.json", name, MEMBERS, {"within": "2h"})
    settings = make_settings(
        prefect_api_url=prefect.api_url, routes_file=routes, admin_token=ADMIN_TOKEN
    )
    bodies = [load("orders", 1520), load("customers", 7), load("payments", 0)]

    async with open_client(settings) as client:
        answers = [await send(client, body) for body in bodies]
        window = await closed_window(client, name, within=30)
        [run_delivery] = await window_deliveries(client, window, within=60)

    joined = [answer["sets"] for answer in answers]
    assert [j[0]["state"] for j in joined] == ["open", "open", "completed"]
    assert joined[0][0]["missing"] == MEMBERS[1:]
    assert joined[0][0]["members"] == ["raw_shop.orders"]
    assert {j[0]["window"] for j in joined} == {window["window"]}
    assert run_delivery["route"] == f"set:{name}"
    assert run_delivery["state"] == "delivered", run_delivery
    flow_run = await finished_run(prefect, run_delivery["flow_run_id"])
    assert flow_run["state"]["type"] == "COMPLETED", flow_log(served)
    assert (
        flow_run["deployment_id"]
        == prefect.request("GET", f"deployments/name/{SET_DEPLOYMENT}")["id"]
    )
    assert flow_run["name"] == f"{name}_{window['window']}"
    assert flow_run["idempotency_key"] == f"set:{name}:{window['window']}"
    parameters = flow_run["parameters"]
    assert [x["execution_id"] for x in parameters["loads"]] == [b["execution_id"] for b in bodies]
    assert [x["rows"] for x in parameters["loads"]] == [1520, 7, 0]  # integers, as typed
    assert [x["member"] for x in parameters["loads"]] == MEMBERS
    assert parameters["loads"][0]["force_history"] is False
    assert parameters["loads"][0]["finished_at"] == "2026-12-07T06:15:00Z"
    assert parameters["missing"] == []
    assert parameters["late"] is False
    assert [run["id"] for run in runs_tagged(prefect, name)] == [flow_run["id"]]


async def test_a_redelivered_member_makes_nothing_new(
    make_settings: SettingsFactory, prefect: PrefectServer, served: ServedFlow, tmp_path: Path
) -> None:
    name = set_name()
    routes = write_routes(tmp_path / "routes.json", name, MEMBERS, {"within": "2h"})
    settings = make_settings(
        prefect_api_url=prefect.api_url, routes_file=routes, admin_token=ADMIN_TOKEN
    )
    bodies = [load("orders"), load("customers"), load("payments")]

    async with open_client(settings) as client:
        first = [await send(client, body) for body in bodies[:2]]
        again = await send(client, bodies[0])  # before the window completes
        assert again["duplicate"] is True
        # The answer repeats the window it joined, as the window stands now.
        assert again["sets"] == [{**first[0]["sets"][0], "missing": ["raw_shop.payments"]}]
        await send(client, bodies[2])
        window = await closed_window(client, name, within=30)
        await window_deliveries(client, window, within=60)
        repeats = [await send(client, body) for body in bodies]  # after it completed
        assert all(answer["duplicate"] for answer in repeats)
        assert [answer["sets"][0]["state"] for answer in repeats] == ["completed"] * 3
        assert len(await windows(client, name)) == 1  # no new window opened by them

    assert len(runs_tagged(prefect, name)) == 1


async def test_a_member_loading_twice_in_one_window_makes_one_run_with_the_later_load(
    make_settings: SettingsFactory, prefect: PrefectServer, served: ServedFlow, tmp_path: Path
) -> None:
    name = set_name()
    members = MEMBERS[:2]
    routes = write_routes(tmp_path / "routes.json", name, members, {"within": "2h"})
    settings = make_settings(
        prefect_api_url=prefect.api_url, routes_file=routes, admin_token=ADMIN_TOKEN
    )
    earlier, later, customers = load("orders", 1), load("orders", 2), load("customers", 3)

    async with open_client(settings) as client:
        answers = [await send(client, body) for body in (earlier, later, customers)]
        window = await closed_window(client, name, within=30)
        [delivery] = await window_deliveries(client, window, within=60)

    assert [a["sets"][0]["state"] for a in answers] == ["open", "open", "completed"]
    assert answers[1]["sets"][0]["missing"] == ["raw_shop.customers"]
    flow_run = await finished_run(prefect, delivery["flow_run_id"])
    assert flow_run["state"]["type"] == "COMPLETED"
    loads = flow_run["parameters"]["loads"]
    assert [x["execution_id"] for x in loads] == [later["execution_id"], customers["execution_id"]]
    assert loads[0]["rows"] == 2
    assert len(runs_tagged(prefect, name)) == 1

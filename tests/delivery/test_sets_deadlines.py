"""A set's deadline, on the dispatcher's clock moved by hand, against a real Prefect server
with its services (events are read back) and the example flow served: two of three
members land; nothing runs before the deadline; at the deadline one run with what
arrived and ``missing`` under ``"run"``, none under ``"skip"``, and an
``erathos.set.late`` event either way."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.inprocess import SettingsFactory, open_client
from tests.support.setfiles import (
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
from tests.support.tokens import ADMIN_TOKEN, auth
from tests.support.waiting import ManualClock, eventually
from tools.localprefect import PrefectServer, ServedFlow

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MEMBERS = ["raw_shop.orders", "raw_shop.customers", "raw_shop.payments"]
DAILY = {"every": "day", "deadline": "07:00", "timezone": "America/Sao_Paulo"}


@pytest.fixture(scope="module")
def served(
    prefect_with_services: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedFlow]:
    home = tmp_path_factory.mktemp("flow-home")
    flow = ServedFlow(prefect_with_services, home=home, log_path=home / "flow.log")
    flow.start()
    try:
        yield flow
    finally:
        flow.stop()


async def checked_after(client: httpx.AsyncClient, moment: float) -> None:
    """Wait until the deadlines were checked at ``moment`` (the clock's) or later."""

    async def checked() -> bool:
        answer = await client.get("/sets", headers=auth(ADMIN_TOKEN))
        at = answer.json()["deadlines_checked_at"]
        return at is not None and datetime.fromisoformat(at).timestamp() >= moment

    await eventually(checked, within=20, what="a check of the deadlines")


def late_events(prefect: PrefectServer, name: str) -> list[dict[str, Any]]:
    query = {
        "filter": {
            "event": {"name": ["erathos.set.late"]},
            "resource": {"labels": {"erathos.set.name": [name]}},
        },
        "limit": 50,
    }
    found: list[dict[str, Any]] = prefect.request("POST", "events/filter", query)["events"]
    return found


@pytest.mark.parametrize("when_late", ["run", "skip"])
async def test_two_of_three_land_and_the_deadline_decides_with_a_late_event_either_way(
    when_late: str,
    make_settings: SettingsFactory,
    prefect_with_services: PrefectServer,
    served: ServedFlow,
    tmp_path: Path,
) -> None:
    prefect = prefect_with_services
    name = set_name()
    routes = write_routes(tmp_path / "r.json", name, MEMBERS, DAILY, when_late=when_late)
    settings = make_settings(
        prefect_api_url=prefect.api_url,
        routes_file=routes,
        admin_token=ADMIN_TOKEN,
        prefect_events=True,
    )
    clock = ManualClock(time.time())
    orders, customers = load("orders", 5), load("customers", 6)

    async with open_client(settings, clock) as client:
        answers = [await send(client, body) for body in (orders, customers)]
        [window] = await windows(client, name)
        deadline = datetime.fromisoformat(window["deadline"]).timestamp()
        assert answers[1]["sets"][0]["missing"] == ["raw_shop.payments"]

        clock.now = deadline - 1  # just before it: nothing happens
        await checked_after(client, clock.now)
        assert [w["state"] for w in await windows(client, name)] == ["open"]
        assert runs_tagged(prefect, name) == []

        clock.now = deadline + 1
        closed = await closed_window(client, name, within=20)
        made = await window_deliveries(client, closed, within=60)
        metrics = (await client.get("/metrics")).text
        signed = await client.post(
            "/ui/sign-in", data={"token": ADMIN_TOKEN}, headers={"Origin": "http://bridge"}
        )
        assert signed.status_code == 303
        page = (await client.get("/ui/sets")).text

    assert closed["state"] == "late"
    assert closed["missing"] == ["raw_shop.payments"]
    outcome = "late_run" if when_late == "run" else "late_skipped"
    assert f'erathos_bridge_set_windows_total{{outcome="{outcome}",set="{name}"}} 1.0' in metrics
    assert f"<td>{closed['window']}</td>" in page
    assert "late</td>" in page
    routes_made = sorted(d["route"] for d in made)
    assert all(d["state"] == "delivered" for d in made), made
    late = late_events(prefect, name)
    assert len(late) == 1
    assert late[0]["payload"]["missing"] == ["raw_shop.payments"]
    assert late[0]["payload"]["run"] is (when_late == "run")
    if when_late == "skip":
        assert routes_made == ["prefect-event"]
        assert runs_tagged(prefect, name) == []
        return
    assert routes_made == ["prefect-event", f"set:{name}"]
    [run_delivery] = [d for d in made if d["route"] == f"set:{name}"]
    flow_run = await finished_run(prefect, run_delivery["flow_run_id"])
    assert flow_run["state"]["type"] == "COMPLETED", flow_log(served)
    parameters = flow_run["parameters"]
    assert parameters["missing"] == ["raw_shop.payments"]
    assert parameters["late"] is True
    executions = [x["execution_id"] for x in parameters["loads"]]
    assert executions == [orders["execution_id"], customers["execution_id"]]
    assert [run["id"] for run in runs_tagged(prefect, name)] == [flow_run["id"]]

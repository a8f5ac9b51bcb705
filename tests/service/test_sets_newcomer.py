"""The newcomer mode's set: ``examples/routes.json`` has a set of two example tables, the
printout shows the load that completes it, and that load makes one COMPLETED run of the
example set flow with both loads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.inprocess import SettingsFactory, open_client
from tests.support.setfiles import closed_window, finished_run, flow_log, send, window_deliveries
from tests.support.tokens import ADMIN_TOKEN
from tools import dev
from tools.localprefect import EXAMPLE_ROUTES, PrefectServer, ServedFlow

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def example_flow(prefect: PrefectServer, tmp_path: Path) -> Iterator[ServedFlow]:
    served = ServedFlow(prefect, home=tmp_path / "flow-home", log_path=tmp_path / "flow.log")
    served.start()
    try:
        yield served
    finally:
        served.stop()


def test_the_printout_shows_how_to_complete_the_example_set() -> None:
    printed = dev.newcomer_printout(
        base_url="http://127.0.0.1:8080",
        ui="http://127.0.0.1:4200",
        deployment_url="http://127.0.0.1:4200/deployments/deployment/x",
        webhook_token="w",
        admin_token="a",
        wrote_dotenv=True,
        settings={},
    )

    assert '"table_name": "orders"' in printed
    assert '"table_name": "customers"' in printed  # the load that completes the set
    assert 'the set "shop"' in printed
    assert "erathos-prefect-bridge sets" in printed


async def test_the_example_set_completes_with_the_printed_loads_in_one_completed_run(
    make_settings: SettingsFactory, prefect: PrefectServer, example_flow: ServedFlow
) -> None:
    settings = make_settings(
        prefect_api_url=prefect.api_url, routes_file=EXAMPLE_ROUTES, admin_token=ADMIN_TOKEN
    )
    orders, customers = dev.example_body(), dev.example_set_body()

    async with open_client(settings) as client:
        first = await send(client, orders)
        second = await send(client, customers)
        window = await closed_window(client, "shop", within=30)
        [run] = [d for d in await window_deliveries(client, window, 60) if d["route"] == "set:shop"]

    assert first["sets"][0]["missing"] == ["raw_shop.customers"]
    assert second["sets"][0]["state"] == "completed"
    flow_run = await finished_run(prefect, run["flow_run_id"])
    assert flow_run["state"]["type"] == "COMPLETED", flow_log(example_flow)
    loads = flow_run["parameters"]["loads"]
    assert [x["execution_id"] for x in loads] == [orders["execution_id"], customers["execution_id"]]
    assert [x["rows"] for x in loads] == [1520, 312]

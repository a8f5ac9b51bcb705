"""Routes files against a real Prefect server: deployments that enforce a parameter schema,
fan-out, failure routes, typed parameters, dead letters with Prefect's reason."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from tests.support.erathos import webhook_body
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.tokens import ADMIN_TOKEN, auth
from tools.localprefect import PrefectServer

pytestmark = pytest.mark.anyio

SCHEMA = {
    "type": "object",
    "properties": {
        "table": {"type": "string"},
        "rows": {"type": "integer"},
        "full": {"type": "boolean"},
    },
    "required": ["table", "rows"],
}
FINISHED_WITH_ROWS = [
    {"variable_name": "STATUS", "operation": "EQUAL", "value": "FINISHED"},
    {"variable_name": "ROWS", "operation": "GREATER_THAN", "value": "0"},
]
TYPED_PARAMETERS = {
    "table": "${{erathos.table_name}}",
    "rows": "${{erathos.rows}}",
    "full": "${{erathos.force_history}}",
}


@dataclass
class Flow:
    name: str
    id: str
    deployments: dict[str, str]  # deployment name -> id


@pytest.fixture
def dbt(prefect: PrefectServer) -> Flow:
    """A flow with three deployments that enforce the parameter schema."""
    name = f"dbt-{uuid.uuid4().hex[:8]}"
    flow_id = prefect.create_flow(name)
    deployments = {
        deployment: prefect.create_deployment(
            flow_id,
            deployment,
            parameter_openapi_schema=SCHEMA if deployment != "on-failure" else {},
            enforce_parameter_schema=True,
        )
        for deployment in ("orders", "finance", "on-failure")
    }
    return Flow(name, flow_id, deployments)


def write_routes(tmp_path: Path, routes: list[dict[str, Any]], **extra: Any) -> Path:
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"routes": routes, **extra}))
    return path


def runs_by_deployment(prefect: PrefectServer, flow: Flow) -> dict[str, list[dict[str, Any]]]:
    names = {v: k for k, v in flow.deployments.items()}
    out: dict[str, list[dict[str, Any]]] = {}
    for run in prefect.flow_runs(flow.id):
        out.setdefault(names.get(run["deployment_id"], "none"), []).append(run)
    return out


@pytest.fixture
def routed(
    tmp_path: Path, make_settings: SettingsFactory, prefect: PrefectServer, dbt: Flow
) -> Settings:
    routes: list[dict[str, Any]] = [
        {
            "name": "orders-to-dbt",
            "rules": FINISHED_WITH_ROWS,
            "deployment": f"{dbt.name}/orders",
            "flow_run": {
                "name": "erathos_run_${{erathos.table_name}}",
                "parameters": TYPED_PARAMETERS,
                "tags": ["erathos", "${{erathos.schema_name}}"],
            },
        },
        {
            "name": "finance",
            "rules": [{"erathos_variable": "STATUS", "operation": "EQUAL", "value": "FINISHED"}],
            "deployment_id": dbt.deployments["finance"],
            "flow_run": {"parameters": TYPED_PARAMETERS},
        },
        {
            "name": "on-failure",
            "rules": [{"variable_name": "STATUS", "operation": "EQUAL", "value": "FAILED"}],
            "deployment": f"{dbt.name}/on-failure",
        },
    ]
    return make_settings(
        prefect_api_url=prefect.api_url,
        routes_file=write_routes(tmp_path, routes),
        admin_token=ADMIN_TOKEN,
    )


async def test_one_load_fans_out_to_two_deployments_with_typed_parameters(
    routed: Settings, prefect: PrefectServer, dbt: Flow
) -> None:
    sent = webhook_body(
        table_name="orders", rows="1520", force_history="true", schema_name="raw_shop"
    )
    async with open_client(routed) as client:
        first = await client.post("/webhooks/erathos", json=sent, headers=auth())
        again = await client.post("/webhooks/erathos", json=sent, headers=auth())

    assert first.status_code == 202, first.text
    assert first.json()["status"] == "delivered"
    assert sorted(d["route"] for d in first.json()["deliveries"]) == ["finance", "orders-to-dbt"]
    assert again.status_code == 200
    runs = runs_by_deployment(prefect, dbt)
    [orders], [finance] = runs["orders"], runs["finance"]
    assert "on-failure" not in runs
    expected = {"table": "orders", "rows": 1520, "full": True}
    assert orders["parameters"] == expected
    assert finance["parameters"] == expected
    assert orders["name"] == "erathos_run_orders"
    assert {"erathos", "raw_shop"} <= set(orders["tags"])
    assert orders["idempotency_key"] == f"{sent['execution_id']}:orders-to-dbt"
    assert finance["idempotency_key"] == f"{sent['execution_id']}:finance"
    assert orders["state"]["type"] == "SCHEDULED"  # from a deployment: a worker will run it


async def test_a_failed_load_goes_only_to_the_failure_route(
    routed: Settings, prefect: PrefectServer, dbt: Flow
) -> None:
    async with open_client(routed) as client:
        answer = await client.post(
            "/webhooks/erathos", json=webhook_body(status="FAILED"), headers=auth()
        )

    assert [d["route"] for d in answer.json()["deliveries"]] == ["on-failure"]
    runs = runs_by_deployment(prefect, dbt)
    assert list(runs) == ["on-failure"]


async def test_an_empty_load_skips_the_route_that_wants_rows(
    routed: Settings, prefect: PrefectServer, dbt: Flow
) -> None:
    async with open_client(routed) as client:
        answer = await client.post("/webhooks/erathos", json=webhook_body(rows="0"), headers=auth())

    assert [d["route"] for d in answer.json()["deliveries"]] == ["finance"]
    assert list(runs_by_deployment(prefect, dbt)) == ["finance"]


async def test_parameters_that_fail_the_schema_are_dead_lettered_with_prefects_message(
    tmp_path: Path, make_settings: SettingsFactory, prefect: PrefectServer, dbt: Flow
) -> None:
    routes: list[dict[str, Any]] = [
        {
            "name": "wrong-types",
            "deployment": f"{dbt.name}/orders",
            "flow_run": {"parameters": {"table": "${{erathos.table_name}}", "rows": "many"}},
        }
    ]
    settings = make_settings(
        prefect_api_url=prefect.api_url, routes_file=write_routes(tmp_path, routes)
    )
    async with open_client(settings) as client:
        answer = (
            await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
        ).json()

    [dead] = answer["deliveries"]
    assert dead["state"] == "dead"
    assert dead["attempts"] == 1
    assert dead["error"].startswith("HTTP 409")
    assert "Validation failed" in dead["error"]
    assert prefect.flow_runs(dbt.id) == []


async def test_an_unknown_deployment_name_is_a_permanent_error(
    tmp_path: Path, make_settings: SettingsFactory, prefect: PrefectServer, dbt: Flow
) -> None:
    routes = [{"name": "typo", "deployment": f"{dbt.name}/nope"}]
    settings = make_settings(
        prefect_api_url=prefect.api_url, routes_file=write_routes(tmp_path, routes)
    )
    async with open_client(settings) as client:
        answer = (
            await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
        ).json()

    [dead] = answer["deliveries"]
    assert dead["state"] == "dead"
    assert f"deployments/name/{dbt.name}/nope: HTTP 404" in dead["error"]

"""Self-hosted Prefect with Basic auth, served under a Prefect Cloud-shaped API path."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from app.prefect import PrefectConnection, PrefectRequest
from tests.conftest import SettingsFactory, auth, open_client
from tests.erathos import execution
from tests.stub import connection_to, stub_server
from tools.localprefect import PrefectServer

ACCOUNT = "0f6a9b9e-3a8c-4c43-9a57-1d0c5c0b6a11"
WORKSPACE = "7c2d4e1f-5b6a-4f8e-8d9c-2a1b3c4d5e6f"
AUTH_STRING = "admin:correct-horse-battery"


@pytest.fixture(scope="module")
def guarded() -> Iterator[PrefectServer]:
    server = PrefectServer.launch(
        base_path=f"/api/accounts/{ACCOUNT}/workspaces/{WORKSPACE}", auth_string=AUTH_STRING
    )
    try:
        yield server
    finally:
        server.stop()


def body() -> dict[str, Any]:
    return {k.lower(): v for k, v in execution().items()}


@pytest.mark.anyio
async def test_right_basic_credentials_on_a_cloud_shaped_url_create_the_run(
    make_settings: SettingsFactory, guarded: PrefectServer
) -> None:
    flow_id = guarded.create_flow(f"dbt-{uuid.uuid4().hex[:8]}")
    settings = make_settings(
        prefect_api_url=guarded.api_url,
        prefect_flow_id=flow_id,
        prefect_api_auth_string=AUTH_STRING,
    )
    sent = body()
    async with open_client(settings) as client:
        answer = (await client.post("/webhooks/erathos", json=sent, headers=auth())).json()
        ready = (await client.get("/readyz")).json()

    assert answer["status"] == "delivered"
    [run] = guarded.flow_runs(flow_id)
    assert run["idempotency_key"] == sent["execution_id"]
    assert ready["prefect"][0]["authorized"] is True


@pytest.mark.anyio
async def test_wrong_basic_credentials_are_a_clear_permanent_error(
    make_settings: SettingsFactory, guarded: PrefectServer
) -> None:
    flow_id = guarded.create_flow(f"dbt-{uuid.uuid4().hex[:8]}")
    settings = make_settings(
        prefect_api_url=guarded.api_url,
        prefect_flow_id=flow_id,
        prefect_api_auth_string="admin:wrong-password-here",
    )
    async with open_client(settings) as client:
        answer = (await client.post("/webhooks/erathos", json=body(), headers=auth())).json()
        ready = (await client.get("/readyz")).json()

    [delivery] = answer["deliveries"]
    assert delivery["state"] == "dead"
    assert delivery["attempts"] == 1
    assert delivery["error"].startswith("HTTP 401")
    assert "wrong-password-here" not in str(answer) + str(ready)
    assert ready["prefect"][0]["authorized"] is False
    assert guarded.flow_runs(flow_id) == []


@pytest.mark.anyio
async def test_an_api_key_is_sent_as_a_bearer_token_with_the_api_version() -> None:
    seen: list[web.Request] = []

    async def cloud(request: web.Request) -> web.Response:
        # Prefect Cloud itself cannot run here; this stands in for its flow_runs endpoint.
        seen.append(request)
        return web.json_response({"id": "run-1"}, status=201)

    workspace = workspace_path()
    async with (
        stub_server(cloud) as url,
        connection_to(
            url + workspace, api_key=SecretStr("pnu_secret_key"), api_version="0.8.4"
        ) as connection,
    ):
        result = await connection.create_flow_run(PrefectRequest("flow_runs/", {"flow_id": "x"}))

    [request] = seen
    assert request.path == f"{workspace}/flow_runs/"
    assert request.headers["authorization"] == "Bearer pnu_secret_key"
    assert request.headers["x-prefect-api-version"] == "0.8.4"
    assert request.headers["user-agent"].startswith("erathos-prefect-bridge/")
    assert result.flow_run_id == "run-1"


def test_a_cloud_run_links_to_its_page_in_the_cloud_ui() -> None:
    connection = PrefectConnection("cloud", f"https://api.prefect.cloud{workspace_path()}")
    assert connection.flow_run_url("run-1") == (
        f"https://app.prefect.cloud/account/{ACCOUNT}/workspace/{WORKSPACE}/runs/flow-run/run-1"
    )


def workspace_path() -> str:
    return f"/api/accounts/{ACCOUNT}/workspaces/{WORKSPACE}"

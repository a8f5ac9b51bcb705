"""Self-hosted Prefect with Basic auth, served under a Prefect Cloud-shaped API path."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from app import __version__
from app.config import PREFECT_API_VERSION
from app.delivery.client import PrefectConnection
from app.routing.router import PrefectRequest
from tests.support.erathos import webhook_body
from tests.support.guarded import ACCOUNT, AUTH_STRING, WORKSPACE
from tests.support.inprocess import GuardedSettings, open_client
from tests.support.stub import mock_connection, recording
from tests.support.tokens import ADMIN_TOKEN, auth
from tools.localprefect import PrefectServer


@pytest.mark.anyio
async def test_right_basic_credentials_on_a_cloud_shaped_url_create_the_run(
    guarded_settings: GuardedSettings, guarded_prefect: PrefectServer, guarded_flow_id: str
) -> None:
    settings = guarded_settings(AUTH_STRING)
    sent = webhook_body()
    async with open_client(settings) as client:
        answer = (await client.post("/webhooks/erathos", json=sent, headers=auth())).json()
        ready = (await client.get("/readyz", headers=auth(ADMIN_TOKEN))).json()

    assert answer["status"] == "delivered"
    [run] = guarded_prefect.flow_runs(guarded_flow_id)
    assert run["idempotency_key"] == sent["execution_id"]
    assert ready["prefect"][0]["authorized"] is True


@pytest.mark.anyio
async def test_wrong_basic_credentials_are_a_clear_permanent_error(
    guarded_settings: GuardedSettings, guarded_prefect: PrefectServer, guarded_flow_id: str
) -> None:
    settings = guarded_settings("admin:wrong-password-here")
    async with open_client(settings) as client:
        answer = (
            await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
        ).json()
        ready = (await client.get("/readyz", headers=auth(ADMIN_TOKEN))).json()

    [delivery] = answer["deliveries"]
    assert delivery["state"] == "dead"
    assert delivery["attempts"] == 1
    assert delivery["error"].startswith("HTTP 401")
    assert "wrong-password-here" not in str(answer) + str(ready)
    assert ready["prefect"][0]["authorized"] is False
    assert guarded_prefect.flow_runs(guarded_flow_id) == []


@pytest.mark.anyio
async def test_an_api_key_is_sent_as_a_bearer_token_with_the_api_version() -> None:
    # Prefect Cloud itself cannot run here; this stands in for its flow_runs endpoint.
    seen, cloud = recording(lambda request: httpx.Response(201, json={"id": "run-1"}))

    workspace = workspace_path()
    async with mock_connection(
        cloud, api_url=f"https://api.prefect.cloud{workspace}", api_key=SecretStr("pnu_secret_key")
    ) as connection:
        result = await connection.create_flow_run(PrefectRequest("flow_runs/", {"flow_id": "x"}))

    [request] = seen
    assert (request.url.host, request.url.path) == ("api.prefect.cloud", f"{workspace}/flow_runs/")
    assert request.headers["authorization"] == "Bearer pnu_secret_key"
    assert request.headers["x-prefect-api-version"] == PREFECT_API_VERSION
    assert request.headers["user-agent"] == f"erathos-prefect-bridge/{__version__}"
    assert result.flow_run_id == "run-1"


@pytest.mark.anyio
async def test_a_cloud_run_links_to_its_page_in_the_cloud_ui() -> None:
    async with PrefectConnection(
        "cloud", f"https://api.prefect.cloud{workspace_path()}", api_version=PREFECT_API_VERSION
    ) as connection:
        url = connection.flow_run_url("run-1")
    assert url == (
        f"https://app.prefect.cloud/account/{ACCOUNT}/workspace/{WORKSPACE}/runs/flow-run/run-1"
    )


def workspace_path() -> str:
    return f"/api/accounts/{ACCOUNT}/workspaces/{WORKSPACE}"

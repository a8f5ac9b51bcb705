"""Drop-in: a webhook made from Erathos's own self-hosted Prefect template, pointed at
this service, becomes the flow run in the real Prefect server, exactly once."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from app.settings import Settings
from tests.conftest import TOKEN
from tests.erathos import execution, render
from tools.localprefect import PrefectServer

pytestmark = pytest.mark.anyio

# Erathos's documented self-hosted template (commas restored).
SEED_SELF_HOSTED: dict[str, Any] = {
    "description": "Create Self-hosted Prefect flow run",
    "is_active": True,
    "method": "POST",
    "url": "https://${{variables.prefect_api_url}}/api/flow_runs/",
    "header": {
        "Content-Type": "application/json",
        "Authorization": "Bearer ${{secrets.prefect_api_key}}",
        "x-prefect-api-version": "${{variables.prefect_api_version}}",
    },
    "body": {
        "name": "erathos_run_${{erathos.table_name}}",
        "flow_id": "${{variables.prefect_flow_id}}",
        "idempotency_key": "${{erathos.execution_id}}",
    },
    "rules": [],
    "jobs": ["<ERATHOS_JOB_ID>"],
}


def seed_request(flow_id: str, metadata: dict[str, str]) -> tuple[str, dict[str, str], bytes]:
    """What Erathos sends for the seed template once the user changed only
    ``prefect_api_url`` (to this service) and the ``prefect_api_key`` secret (to its token)."""
    variables = {
        "prefect_api_url": "bridge",
        "prefect_api_version": "0.8.4",
        "prefect_flow_id": flow_id,
    }
    secrets = {"prefect_api_key": TOKEN}
    url = render(SEED_SELF_HOSTED["url"], metadata, variables, secrets)
    headers = render(SEED_SELF_HOSTED["header"], metadata, variables, secrets)
    body = json.dumps(render(SEED_SELF_HOSTED["body"], metadata, variables, secrets)).encode()
    return url, headers, body


async def test_the_seed_template_pointed_at_the_service_creates_one_flow_run(
    client: httpx.AsyncClient, prefect: PrefectServer, flow_id: str
) -> None:
    metadata = execution(table_name="orders")
    url, headers, body = seed_request(flow_id, metadata)
    assert url == "https://bridge/api/flow_runs/"

    first = await client.post(url, headers=headers, content=body)
    again = await client.post(url, headers=headers, content=body)

    assert first.status_code == 201, first.text
    assert again.status_code == 200
    created = first.json()
    assert created["name"] == "erathos_run_orders"
    assert created["idempotency_key"] == metadata["EXECUTION_ID"]
    assert again.json()["id"] == created["id"]
    [run] = prefect.flow_runs(flow_id)
    assert run["id"] == created["id"]


async def test_a_deployment_request_is_forwarded_to_the_deployment(
    client: httpx.AsyncClient, prefect: PrefectServer, flow_id: str
) -> None:
    deployment_id = prefect.create_deployment(flow_id, "prod")
    key = str(uuid.uuid4())

    response = await client.post(
        f"/api/deployments/{deployment_id}/create_flow_run",
        json={"idempotency_key": key, "parameters": {"table": "orders"}},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )

    assert response.status_code == 201, response.text
    assert response.json()["deployment_id"] == deployment_id
    [run] = prefect.flow_runs(flow_id)
    assert run["idempotency_key"] == key


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "flow_id": str(uuid.uuid4())}, "idempotency_key"),
        ({"idempotency_key": "k", "flow_id": "not-a-uuid"}, "flow_id"),
        ({"idempotency_key": "k", "flow_id": str(uuid.uuid4()), "unknown": 1}, "unknown"),
    ],
)
async def test_a_prefect_shaped_request_is_validated_at_the_door(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post(
        "/api/flow_runs/", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
    )

    assert response.status_code == 422
    assert field in {f["field"] for f in response.json()["error"]["fields"]}


async def test_the_drop_in_needs_the_service_token_not_a_prefect_key(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await client.post(
        "/api/flow_runs/",
        json={"idempotency_key": "k", "flow_id": str(settings.prefect_flow_id)},
        headers={"Authorization": "Bearer pnu_some_prefect_cloud_key"},
    )

    assert response.status_code == 401

"""The webhook end to end against a real Prefect server: one execution, one flow run."""

from __future__ import annotations

import json

import httpx
import pytest

from app.cli import erathos_template
from app.config import Settings
from tests.support.erathos import execution, request_from, webhook_body
from tests.support.inprocess import SettingsFactory, open_client, stored_events
from tests.support.isotime import recent_iso_utc
from tests.support.tokens import ADMIN_TOKEN, TOKEN, auth
from tools.localprefect import PrefectServer

pytestmark = pytest.mark.anyio


async def test_a_finished_execution_creates_one_flow_run_named_after_its_table(
    client: httpx.AsyncClient, prefect: PrefectServer, flow_id: str
) -> None:
    body = webhook_body(table_name="orders")

    response = await client.post("/webhooks/erathos", json=body, headers=auth())

    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["status"] == "delivered"
    [delivery] = answer["deliveries"]
    assert delivery["state"] == "delivered"
    [run] = prefect.flow_runs(flow_id)
    assert run["id"] == delivery["flow_run_id"]
    assert run["name"] == "erathos_run_orders"
    assert run["idempotency_key"] == body["execution_id"]
    assert delivery["flow_run_url"] == f"http://127.0.0.1:{prefect.port}/runs/flow-run/{run['id']}"


async def test_the_same_execution_again_answers_200_and_creates_nothing(
    client: httpx.AsyncClient, prefect: PrefectServer, flow_id: str
) -> None:
    body = webhook_body()
    first = await client.post("/webhooks/erathos", json=body, headers=auth())

    again = await client.post("/webhooks/erathos", json=body, headers=auth())

    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert (
        again.json()["deliveries"][0]["flow_run_id"] == first.json()["deliveries"][0]["flow_run_id"]
    )
    assert len(prefect.flow_runs(flow_id)) == 1


async def test_a_failed_execution_is_recorded_and_triggers_nothing(
    client: httpx.AsyncClient, prefect: PrefectServer, flow_id: str
) -> None:
    response = await client.post(
        "/webhooks/erathos", json=webhook_body(status="FAILED"), headers=auth()
    )

    assert response.status_code == 202
    assert response.json()["status"] == "ignored"
    assert "STATUS EQUAL 'FINISHED' does not hold" in response.json()["reason"]
    assert prefect.flow_runs(flow_id) == []


async def test_the_printed_template_rendered_as_erathos_renders_it_creates_one_run(
    settings: Settings, prefect: PrefectServer, flow_id: str
) -> None:
    definition = erathos_template(settings, "http://bridge")
    metadata = execution()
    url, headers, body = request_from(
        definition, metadata, secrets={"erathos_prefect_bridge_token": TOKEN}
    )
    assert all(isinstance(v, str) for v in json.loads(body).values())

    async with open_client(settings) as client:
        first = await client.post(url, headers=headers, content=body)
        again = await client.post(url, headers=headers, content=body)
        wrong = await client.post(
            url, headers={**headers, "Authorization": "Bearer not-the-token-at-all"}, content=body
        )

    assert (first.status_code, again.status_code, wrong.status_code) == (202, 200, 401)
    [run] = prefect.flow_runs(flow_id)
    assert run["idempotency_key"] == metadata["EXECUTION_ID"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param({"Authorization": f"Bearer {TOKEN}x"}, id="wrong-token"),
        pytest.param({"Authorization": f"Basic {TOKEN}"}, id="basic-scheme"),
        pytest.param({"Authorization": "Bearer "}, id="empty-bearer"),
    ],
)
async def test_callers_without_the_token_are_refused_and_nothing_is_stored_or_sent(
    settings: Settings, prefect: PrefectServer, flow_id: str, headers: dict[str, str]
) -> None:
    async with open_client(settings) as client:
        response = await client.post("/webhooks/erathos", json=webhook_body(), headers=headers)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    assert await stored_events(settings) == []
    assert prefect.flow_runs(flow_id) == []


async def test_every_rotated_token_is_accepted(
    make_settings: SettingsFactory, prefect: PrefectServer, flow_id: str
) -> None:
    settings = make_settings(
        webhook_tokens="old-token-0123456789abc, new-token-0123456789abc",
        prefect_api_url=prefect.api_url,
        prefect_flow_id=flow_id,
    )
    async with open_client(settings) as client:
        old = await client.post(
            "/webhooks/erathos", json=webhook_body(), headers=auth("old-token-0123456789abc")
        )
        new = await client.post(
            "/webhooks/erathos", json=webhook_body(), headers=auth("new-token-0123456789abc")
        )

    assert (old.status_code, new.status_code) == (202, 202)


async def test_a_body_over_the_cap_is_refused_with_413(client: httpx.AsyncClient) -> None:
    body = {**webhook_body(), "padding": "x" * 70_000}

    response = await client.post("/webhooks/erathos", json=body, headers=auth())

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_a_body_that_is_not_json_is_refused_with_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/webhooks/erathos",
        content=b"execution_id=1",
        headers={**auth(), "Content-Type": "text/plain"},
    )

    assert response.status_code == 415


async def test_invalid_fields_are_all_named_in_one_422(
    client: httpx.AsyncClient, prefect: PrefectServer, flow_id: str
) -> None:
    body = webhook_body(rows="many", finished_at_time="25:99")
    del body["execution_id"]

    response = await client.post("/webhooks/erathos", json=body, headers=auth())

    assert response.status_code == 422
    named = {f["field"] for f in response.json()["error"]["fields"]}
    assert named == {"execution_id", "rows", "finished_at_time"}
    assert prefect.flow_runs(flow_id) == []


async def test_malformed_json_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/webhooks/erathos",
        content=b'{"execution_id": ',
        headers={**auth(), "Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


async def test_a_queued_delivery_says_when_it_is_tried_next_in_iso_8601_utc(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(prefect_api_url="http://127.0.0.1:9/api", sync_wait="100ms")
    async with open_client(settings) as client:
        response = await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())

    assert response.json()["status"] == "queued"
    [delivery] = response.json()["deliveries"]
    assert recent_iso_utc(delivery["next_attempt_at"]), delivery


async def test_every_time_in_the_api_schema_is_a_date_time(make_settings: SettingsFactory) -> None:
    settings = make_settings(admin_token=ADMIN_TOKEN, dropin=True)
    async with open_client(settings) as client:
        schema = (await client.get("/openapi.json")).json()

    times = {
        f"{model}.{name}": prop
        for model, definition in schema["components"]["schemas"].items()
        for name, prop in definition.get("properties", {}).items()
        if name.endswith("_at")
    }
    assert {"DeliveryOut.next_attempt_at", "EventOut.received_at"} <= set(times)
    for name, prop in times.items():
        formats = {p.get("format") for p in prop.get("anyOf", [prop]) if p.get("type") != "null"}
        assert formats == {"date-time"}, name


async def test_flow_run_links_use_the_ui_address_when_one_is_set(
    make_settings: SettingsFactory, prefect: PrefectServer, flow_id: str
) -> None:
    # As in compose: the service reaches http://prefect:4200/api, a browser localhost.
    settings = make_settings(
        prefect_api_url=prefect.api_url,
        prefect_flow_id=flow_id,
        prefect_ui_url="http://localhost:4200/",
    )
    async with open_client(settings) as client:
        answer = await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())

    [delivery] = answer.json()["deliveries"]
    assert delivery["flow_run_url"] == (
        f"http://localhost:4200/runs/flow-run/{delivery['flow_run_id']}"
    )

"""Drop-in: a webhook made from Erathos's own self-hosted Prefect template, pointed at
this service, becomes the flow run in the real Prefect server, exactly once per target
and key; and the webhook token starts nothing the service is not configured for."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from app.config import Settings
from app.routing.router import DEFAULT_CONNECTION
from app.storage.database import Database
from app.storage.records import DROP_IN_ROUTE, DeliveryState, NewDelivery, NewEvent
from app.storage.schema import deliveries, meta
from app.storage.store import Store
from tests.support.erathos import execution, render, webhook_body
from tests.support.inprocess import SettingsFactory, open_client, stored_events
from tests.support.stub import REFUSED_URL
from tests.support.tokens import ADMIN_TOKEN, TOKEN, auth
from tests.support.waiting import eventually
from tools.localprefect import PrefectServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings(make_settings: SettingsFactory, prefect: PrefectServer, flow_id: str) -> Settings:
    """The drop-in turned on, for the environment's Prefect and this test's flow."""
    return make_settings(prefect_api_url=prefect.api_url, prefect_flow_id=flow_id, dropin=True)


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


async def test_a_deployment_request_is_forwarded_to_an_allowed_deployment(
    make_settings: SettingsFactory, prefect: PrefectServer, flow_id: str
) -> None:
    deployment_id = prefect.create_deployment(flow_id, "prod")
    settings = make_settings(
        prefect_api_url=prefect.api_url, dropin=True, dropin_allow=deployment_id
    )
    key = str(uuid.uuid4())

    async with open_client(settings) as client:
        response = await client.post(
            f"/api/deployments/{deployment_id}/create_flow_run",
            json={"idempotency_key": key, "parameters": {"table": "orders"}},
            headers=auth(),
        )

    assert response.status_code == 201, response.text
    assert response.json()["deployment_id"] == deployment_id
    [run] = prefect.flow_runs(flow_id)
    # Prefect deduplicates per flow: the key names the deployment too.
    assert run["idempotency_key"] == f"deployment/{deployment_id}/{key}"


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


# -- what the webhook token may start ---------------------------------------------------


async def test_the_drop_in_is_off_unless_turned_on(
    make_settings: SettingsFactory, prefect: PrefectServer, flow_id: str
) -> None:
    settings = make_settings(prefect_api_url=prefect.api_url, prefect_flow_id=flow_id)
    body = {"idempotency_key": str(uuid.uuid4()), "flow_id": flow_id}

    async with open_client(settings) as client:
        response = await client.post("/api/flow_runs/", json=body, headers=auth())

    assert response.status_code == 404
    assert prefect.flow_runs(flow_id) == []


async def test_a_flow_the_service_is_not_configured_for_is_forbidden(
    client: httpx.AsyncClient, settings: Settings, prefect: PrefectServer
) -> None:
    other_flow = prefect.create_flow(f"other-{uuid.uuid4().hex[:8]}")
    body = {"idempotency_key": str(uuid.uuid4()), "flow_id": other_flow}

    response = await client.post("/api/flow_runs/", json=body, headers=auth())

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert "BRIDGE_DROPIN_ALLOW" in response.json()["error"]["message"]
    assert prefect.flow_runs(other_flow) == []
    assert await stored_events(settings) == []


async def test_deployments_are_allowed_by_route_by_id_or_by_name_and_no_other(
    tmp_path: Any, make_settings: SettingsFactory, prefect: PrefectServer, flow_id: str
) -> None:
    flow_name = f"dbt-{uuid.uuid4().hex[:8]}"
    named_flow = prefect.create_flow(flow_name)
    routed = prefect.create_deployment(flow_id, "routed")
    by_id = prefect.create_deployment(flow_id, "by-id")
    by_name = prefect.create_deployment(named_flow, "by-name")
    other = prefect.create_deployment(flow_id, "other")
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"routes": [{"name": "dbt", "deployment_id": routed}]}))
    settings = make_settings(
        prefect_api_url=prefect.api_url,
        prefect_flow_id=None,
        routes_file=str(routes),
        dropin=True,
        dropin_allow=f"{by_id},{flow_name}/by-name",
    )

    async with open_client(settings) as client:
        answers = {
            deployment: await client.post(
                f"/api/deployments/{deployment}/create_flow_run",
                json={"idempotency_key": str(uuid.uuid4())},
                headers=auth(),
            )
            for deployment in (routed, by_id, by_name, other)
        }

    statuses = {d: a.status_code for d, a in answers.items()}
    assert statuses == {routed: 201, by_id: 201, by_name: 201, other: 403}
    assert sorted(r["deployment_id"] for r in prefect.flow_runs(flow_id)) == sorted([routed, by_id])


async def test_an_allowed_name_cannot_be_checked_while_prefect_is_down_so_nothing_is_stored(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(
        prefect_api_url=REFUSED_URL, dropin=True, dropin_allow="dbt/prod", prefect_timeout="1s"
    )

    async with open_client(settings) as client:
        response = await client.post(
            f"/api/deployments/{uuid.uuid4()}/create_flow_run",
            json={"idempotency_key": "k-1"},
            headers=auth(),
        )

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "target_unverifiable"
    assert await stored_events(settings) == []


@pytest.mark.parametrize("field", ["state", "context", "job_variables", "work_queue_name"])
async def test_fields_that_change_how_a_run_executes_are_refused_unless_allowed(
    make_settings: SettingsFactory, prefect: PrefectServer, flow_id: str, field: str
) -> None:
    values = {
        "state": {"type": "COMPLETED"},
        "context": {"x": 1},
        "job_variables": {"image": "attacker/image"},
        "work_queue_name": "elsewhere",
    }
    body = {"idempotency_key": str(uuid.uuid4()), "flow_id": flow_id, field: values[field]}
    closed = make_settings(prefect_api_url=prefect.api_url, prefect_flow_id=flow_id, dropin=True)
    opened = make_settings(
        prefect_api_url=prefect.api_url,
        prefect_flow_id=flow_id,
        dropin=True,
        dropin_allow_fields=field,
    )

    async with open_client(closed) as client:
        refused = await client.post("/api/flow_runs/", json=body, headers=auth())
    assert prefect.flow_runs(flow_id) == []
    async with open_client(opened) as client:
        allowed = await client.post("/api/flow_runs/", json=body, headers=auth())

    assert refused.status_code == 422
    assert [f["field"] for f in refused.json()["error"]["fields"]] == [field]
    assert "BRIDGE_DROPIN_ALLOW_FIELDS" in refused.json()["error"]["fields"][0]["message"]
    assert allowed.status_code == 201, allowed.text


# -- one run per target and key ---------------------------------------------------------


@pytest.fixture
def second_flow_allowed(
    make_settings: SettingsFactory, prefect: PrefectServer, flow_id: str
) -> tuple[Settings, str]:
    """Settings whose drop-in may start this test's flow and a second one; and that one."""
    second_flow = prefect.create_flow(f"second-{uuid.uuid4().hex[:8]}")
    settings = make_settings(
        prefect_api_url=prefect.api_url,
        prefect_flow_id=flow_id,
        dropin=True,
        dropin_allow=second_flow,
    )
    return settings, second_flow


async def test_one_key_for_two_flows_makes_two_runs_and_again_for_one_flow_makes_none(
    second_flow_allowed: tuple[Settings, str], prefect: PrefectServer, flow_id: str
) -> None:
    settings, second_flow = second_flow_allowed
    key = str(uuid.uuid4())

    async with open_client(settings) as client:
        first = await client.post(
            "/api/flow_runs/", json={"idempotency_key": key, "flow_id": flow_id}, headers=auth()
        )
        other = await client.post(
            "/api/flow_runs/", json={"idempotency_key": key, "flow_id": second_flow}, headers=auth()
        )
        again = await client.post(
            "/api/flow_runs/", json={"idempotency_key": key, "flow_id": flow_id}, headers=auth()
        )

    assert (first.status_code, other.status_code, again.status_code) == (201, 201, 200)
    assert other.json()["flow_id"] == second_flow
    assert again.json()["id"] == first.json()["id"]
    assert len(prefect.flow_runs(flow_id)) == len(prefect.flow_runs(second_flow)) == 1


async def test_a_webhook_and_a_drop_in_call_with_one_execution_id_are_two_events(
    second_flow_allowed: tuple[Settings, str], prefect: PrefectServer, flow_id: str
) -> None:
    settings, second_flow = second_flow_allowed
    sent = webhook_body()
    key = sent["execution_id"]

    async with open_client(settings) as client:
        webhook = await client.post("/webhooks/erathos", json=sent, headers=auth())
        dropped_in = await client.post(
            "/api/flow_runs/", json={"idempotency_key": key, "flow_id": second_flow}, headers=auth()
        )

    assert (webhook.status_code, webhook.json()["status"]) == (202, "delivered")
    assert dropped_in.status_code == 201, dropped_in.text
    assert [r["idempotency_key"] for r in prefect.flow_runs(flow_id)] == [key]
    assert [r["idempotency_key"] for r in prefect.flow_runs(second_flow)] == [key]


@pytest.mark.parametrize("first", ["webhook", "drop-in"])
async def test_an_execution_id_shaped_like_a_drop_in_key_never_meets_one(
    second_flow_allowed: tuple[Settings, str], prefect: PrefectServer, flow_id: str, first: str
) -> None:
    """An Erathos execution id may hold ``:``: ``flow:<id>:<key>`` was also how a drop-in
    call was stored. Whichever comes first, each is its own event and its own run."""
    settings, second_flow = second_flow_allowed
    key = uuid.uuid4().hex
    sent = webhook_body(execution_id=f"flow:{second_flow}:{key}")
    call = {"idempotency_key": key, "flow_id": second_flow}

    async with open_client(settings) as client:
        if first == "webhook":
            webhook = await client.post("/webhooks/erathos", json=sent, headers=auth())
            dropped_in = await client.post("/api/flow_runs/", json=call, headers=auth())
        else:
            dropped_in = await client.post("/api/flow_runs/", json=call, headers=auth())
            webhook = await client.post("/webhooks/erathos", json=sent, headers=auth())

    assert (webhook.status_code, webhook.json()["duplicate"]) == (202, False)
    assert dropped_in.status_code == 201, dropped_in.text
    assert dropped_in.json()["flow_id"] == second_flow
    [run] = prefect.flow_runs(flow_id)
    assert run["idempotency_key"] == sent["execution_id"]
    assert [r["id"] for r in prefect.flow_runs(second_flow)] == [dropped_in.json()["id"]]


async def test_another_deployment_of_the_flow_is_another_run_whatever_the_key(
    make_settings: SettingsFactory, prefect: PrefectServer, flow_id: str
) -> None:
    """Prefect deduplicates per flow: a key used by a bare run of the flow, or by another
    of its deployments, would be answered with that run."""
    prod = prefect.create_deployment(flow_id, "prod")
    staging = prefect.create_deployment(flow_id, "staging")
    key = str(uuid.uuid4())
    bare = prefect.request("POST", "flow_runs/", {"flow_id": flow_id, "idempotency_key": key})
    settings = make_settings(
        prefect_api_url=prefect.api_url, dropin=True, dropin_allow=f"{prod},{staging}"
    )

    async with open_client(settings) as client:
        answers = [
            await client.post(
                f"/api/deployments/{deployment}/create_flow_run",
                json={"idempotency_key": key},
                headers=auth(),
            )
            for deployment in (prod, staging, prod)
        ]

    assert [a.status_code for a in answers] == [201, 201, 200]
    assert [a.json()["deployment_id"] for a in answers] == [prod, staging, prod]
    assert answers[2].json()["id"] == answers[0].json()["id"]
    runs = {r["id"]: r["deployment_id"] for r in prefect.flow_runs(flow_id)}
    assert runs.pop(bare["id"]) is None
    assert sorted(runs.values()) == sorted([prod, staging])


async def test_a_replay_with_a_new_run_sends_the_new_key(
    make_settings: SettingsFactory, prefect: PrefectServer, flow_id: str
) -> None:
    settings = make_settings(
        prefect_api_url=prefect.api_url,
        prefect_flow_id=flow_id,
        dropin=True,
        admin_token=ADMIN_TOKEN,
    )
    key = str(uuid.uuid4())

    async with open_client(settings) as client:
        await client.post(
            "/api/flow_runs/", json={"idempotency_key": key, "flow_id": flow_id}, headers=auth()
        )
        [event] = (await client.get("/events", headers=auth(ADMIN_TOKEN))).json()["events"]
        [delivery] = event["deliveries"]
        replayed = await client.post(
            f"/deliveries/{delivery['id']}/replay",
            params={"new_run": "true"},
            headers=auth(ADMIN_TOKEN),
        )
        await eventually(
            lambda: len(prefect.flow_runs(flow_id)) == 2, within=10, what="the replay's run"
        )
        shown = (await client.get(f"/events/{event['id']}", headers=auth(ADMIN_TOKEN))).json()

    assert replayed.status_code == 202
    keys = sorted(r["idempotency_key"] for r in prefect.flow_runs(flow_id))
    [new_key] = [k for k in keys if k != key]
    assert new_key.startswith(f"{key}:replay-")
    [shown_delivery] = shown["deliveries"]
    assert shown_delivery["idempotency_key"] == new_key  # what was shown is what was sent


# -- Prefect's own answer ---------------------------------------------------------------


async def test_a_call_prefect_refuses_for_good_gets_prefects_status_and_body(
    make_settings: SettingsFactory, prefect: PrefectServer, flow_id: str
) -> None:
    unknown_flow, unknown_deployment = str(uuid.uuid4()), str(uuid.uuid4())
    settings = make_settings(
        prefect_api_url=prefect.api_url,
        prefect_flow_id=flow_id,
        dropin=True,
        dropin_allow=f"{unknown_flow},{unknown_deployment}",
    )

    async with open_client(settings) as client:
        no_flow = await client.post(
            "/api/flow_runs/",
            json={"idempotency_key": "k-1", "flow_id": unknown_flow},
            headers=auth(),
        )
        no_deployment = await client.post(
            f"/api/deployments/{unknown_deployment}/create_flow_run",
            json={"idempotency_key": "k-2"},
            headers=auth(),
        )

    assert no_flow.status_code == 409, no_flow.text  # Prefect: data integrity conflict
    assert "detail" in no_flow.json() or "exception_message" in no_flow.json()
    assert no_deployment.status_code == 404, no_deployment.text
    assert no_deployment.json() == {"detail": "Deployment not found"}


# -- an upgrade from version 1 ----------------------------------------------------------


async def test_events_stored_by_version_1_keep_working_after_the_upgrade(
    second_flow_allowed: tuple[Settings, str], prefect: PrefectServer, flow_id: str
) -> None:
    """Version 1 keyed a drop-in event by its idempotency key alone. After the upgrade
    the same call is still a duplicate of it, the same key for another flow is a new
    run, and an Erathos event stored then is still found by its execution id."""
    settings, second_flow = second_flow_allowed
    key = str(uuid.uuid4())
    existing = prefect.request("POST", "flow_runs/", {"flow_id": flow_id, "idempotency_key": key})
    erathos = webhook_body()
    await store_as_version_1(settings.database_url, flow_id, key, existing["id"], erathos)

    async with open_client(settings) as client:
        again = await client.post(
            "/api/flow_runs/", json={"idempotency_key": key, "flow_id": flow_id}, headers=auth()
        )
        other = await client.post(
            "/api/flow_runs/", json={"idempotency_key": key, "flow_id": second_flow}, headers=auth()
        )
        webhook = await client.post("/webhooks/erathos", json=erathos, headers=auth())

    assert (again.status_code, again.json()["id"]) == (200, existing["id"])
    assert other.status_code == 201, other.text
    assert (webhook.status_code, webhook.json()["duplicate"]) == (200, True)
    assert [r["id"] for r in prefect.flow_runs(flow_id)] == [existing["id"]]
    assert len(prefect.flow_runs(second_flow)) == 1
    keys = sorted(event.execution_id for event, _ in await stored_events(settings))
    assert keys == sorted(
        [
            f"drop-in/flow/{flow_id}/{key}",
            f"drop-in/flow/{second_flow}/{key}",
            erathos["execution_id"],
        ]
    )


async def store_as_version_1(
    url: str, flow_id: str, key: str, flow_run_id: str, erathos: dict[str, str]
) -> None:
    """A database as version 1 left it: a delivered drop-in event keyed by its
    idempotency key alone, an Erathos event, and schema version 1."""
    database = await Database.open(url)
    try:
        store = Store(database)
        body = {"flow_id": flow_id, "idempotency_key": key, "name": "erathos_run_orders"}
        dropped_in = await store.record_event(
            NewEvent(
                execution_id=key,
                payload={DROP_IN_ROUTE: {"path": "flow_runs/", "body": body}},
                deliveries=[NewDelivery(DROP_IN_ROUTE, DEFAULT_CONNECTION, key)],
            )
        )
        await store.record_event(NewEvent(execution_id=erathos["execution_id"], payload=erathos))
        [delivery] = dropped_in.deliveries
        done = {"state": DeliveryState.DELIVERED.value, "flow_run_id": flow_run_id}
        version = {"value": "1"}
        await store.database.run(
            lambda conn: (
                conn.execute(update(deliveries).where(deliveries.c.id == delivery.id), done),
                conn.execute(update(meta).where(meta.c.key == "schema_version"), version),
            )
        )
    finally:
        await database.close()


async def test_a_flow_configured_by_name_is_allowed_by_the_id_it_resolves_to(
    make_settings: SettingsFactory, prefect: PrefectServer
) -> None:
    name = f"by-name-{uuid.uuid4().hex[:8]}"
    named_flow = prefect.create_flow(name)
    other_flow = prefect.create_flow(f"other-{uuid.uuid4().hex[:8]}")
    settings = make_settings(
        prefect_api_url=prefect.api_url,
        prefect_flow_id=None,
        prefect_flow_name=name,
        dropin=True,
    )

    async with open_client(settings) as client:
        allowed = await client.post(
            "/api/flow_runs/",
            json={"idempotency_key": str(uuid.uuid4()), "flow_id": named_flow},
            headers=auth(),
        )
        refused = await client.post(
            "/api/flow_runs/",
            json={"idempotency_key": str(uuid.uuid4()), "flow_id": other_flow},
            headers=auth(),
        )

    assert (allowed.status_code, refused.status_code) == (201, 403)
    assert len(prefect.flow_runs(named_flow)) == 1
    assert prefect.flow_runs(other_flow) == []

"""A flow chosen by name (PREFECT_FLOW_NAME, or a route's ``flow``): found, or created, on
first use against the real Prefect server, its id kept per connection; a failed lookup is
an attempt like any other."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import ConfigurationError, Settings
from app.delivery.client import Outcome
from app.intake.diagnose import simulate
from app.routing.event import ErathosEvent
from app.service import configure
from tests.support.erathos import webhook_body
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.stub import mock_connection, recording
from tests.support.tokens import auth
from tools.localprefect import PrefectServer

pytestmark = pytest.mark.anyio


def flows_named(prefect: PrefectServer, name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = prefect.request(
        "POST", "flows/filter", {"flows": {"name": {"any_": [name]}}}
    )
    return found


@pytest.fixture
def flow_name() -> str:
    """A flow name no test has used: Prefect has no flow by it yet."""
    return f"dbt-by-name-{uuid.uuid4().hex[:10]}"


def by_name(make_settings: SettingsFactory, prefect: PrefectServer, name: str) -> Settings:
    return make_settings(
        prefect_api_url=prefect.api_url, prefect_flow_id=None, prefect_flow_name=name
    )


async def test_a_flow_name_prefect_does_not_know_is_created_once_and_its_runs_made(
    make_settings: SettingsFactory, prefect: PrefectServer, flow_name: str
) -> None:
    sent = [webhook_body(), webhook_body()]
    async with open_client(by_name(make_settings, prefect, flow_name)) as client:
        answers = [
            (await client.post("/webhooks/erathos", json=body, headers=auth())).json()
            for body in sent
        ]

    assert [a["status"] for a in answers] == ["delivered", "delivered"], answers
    [flow] = flows_named(prefect, flow_name)
    runs = prefect.flow_runs(flow["id"])
    assert sorted(run["idempotency_key"] for run in runs) == sorted(
        body["execution_id"] for body in sent
    )
    assert {run["name"] for run in runs} == {"erathos_run_orders"}


async def test_a_second_service_finds_the_flow_the_first_created(
    make_settings: SettingsFactory, prefect: PrefectServer, flow_name: str, tmp_path: Path
) -> None:
    first = by_name(make_settings, prefect, flow_name)
    second = first.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'second.db'}"})

    async with open_client(first) as client:
        one = await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
    async with open_client(second) as client:
        other = await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())

    assert [one.json()["status"], other.json()["status"]] == ["delivered", "delivered"]
    [flow] = flows_named(prefect, flow_name)
    assert len(prefect.flow_runs(flow["id"])) == 2


async def test_a_route_may_name_its_flow(
    make_settings: SettingsFactory, prefect: PrefectServer, flow_name: str, tmp_path: Path
) -> None:
    routes_file = tmp_path / "routes.json"
    routes_file.write_text(json.dumps({"routes": [{"name": "by-name", "flow": flow_name}]}))
    settings = make_settings(prefect_api_url=prefect.api_url, routes_file=routes_file)
    sent = webhook_body()

    async with open_client(settings) as client:
        answer = (await client.post("/webhooks/erathos", json=sent, headers=auth())).json()

    assert answer["status"] == "delivered", answer
    [flow] = flows_named(prefect, flow_name)
    [run] = prefect.flow_runs(flow["id"])
    assert run["idempotency_key"] == f"{sent['execution_id']}:by-name"


@pytest.mark.parametrize(
    ("route", "message"),
    [
        pytest.param(
            {"flow": "dbt/prod"},
            "routes[0] (r).flow: must not contain any of / % & > < (Prefect refuses them)",
            id="banned-character",
        ),
        pytest.param({"flow": " "}, "routes[0] (r).flow: must not be blank", id="blank"),
        pytest.param(
            {"flow": "dbt", "flow_id": str(uuid.uuid4())},
            "routes[0] (r): give exactly one target: deployment, deployment_id, flow_id or "
            "flow (got flow_id, flow)",
            id="flow-and-flow-id",
        ),
    ],
)
def test_a_routes_flow_name_prefect_would_refuse_stops_start_up(
    make_settings: SettingsFactory, tmp_path: Path, route: dict[str, str], message: str
) -> None:
    routes_file = tmp_path / "routes.json"
    routes_file.write_text(json.dumps({"routes": [{"name": "r", **route}]}))
    settings = make_settings(routes_file=routes_file)

    with pytest.raises(ConfigurationError) as refused:
        configure(settings)

    assert str(refused.value) == f"BRIDGE_ROUTES_FILE: {message}"


async def test_simulate_shows_where_the_named_flows_id_goes(
    make_settings: SettingsFactory, flow_name: str
) -> None:
    settings = make_settings(prefect_flow_id=None, prefect_flow_name=flow_name)
    routing, lookup = configure(settings)
    event = ErathosEvent.model_validate(webhook_body())

    async with mock_connection(lambda request: httpx.Response(500)) as connection:
        report = simulate(event, routing.router, {"default": connection}, lookup)

    [route] = report["routes"]
    assert route["target"] == f"flow {flow_name!r}"
    assert route["request"]["body"]["flow_id"] == f"<id of {flow_name}>"


async def test_the_flow_id_is_looked_up_once_per_connection() -> None:
    seen, prefect = recording(lambda request: httpx.Response(200, json={"id": "flow-1"}))

    async with mock_connection(prefect) as connection:
        first = await connection.resolve_flow("dbt")
        again = await connection.resolve_flow("dbt")

    assert first == again == ("flow-1", None)
    [request] = seen
    assert (request.method, request.url.path) == ("POST", "/api/flows/")
    assert json.loads(request.content) == {"name": "dbt"}


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        pytest.param(
            httpx.Response(403, json={"detail": "Forbidden"}), Outcome.PERMANENT, id="403"
        ),
        pytest.param(httpx.Response(200, json={}), Outcome.PERMANENT, id="no-id"),
        pytest.param(
            httpx.Response(503, headers={"Retry-After": "7"}), Outcome.TRANSIENT, id="503"
        ),
    ],
)
async def test_a_failed_flow_lookup_is_an_attempt_result_and_is_not_kept(
    answer: httpx.Response, outcome: Outcome
) -> None:
    seen, prefect = recording(lambda request: answer)

    async with mock_connection(prefect) as connection:
        flow_id, failure = await connection.resolve_flow("dbt")
        await connection.resolve_flow("dbt")

    assert flow_id is None
    assert failure is not None
    assert failure.outcome is outcome
    assert failure.error is not None
    assert failure.error.startswith("finding or creating flow 'dbt': HTTP ")
    assert failure.retry_after == (7.0 if answer.status_code == 503 else None)
    assert len(seen) == 2  # asked again: a failure is never cached


async def test_an_unreachable_prefect_is_a_transient_flow_lookup() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with mock_connection(refuse) as connection:
        flow_id, failure = await connection.resolve_flow("dbt")

    assert flow_id is None
    assert failure is not None
    assert (failure.outcome, failure.status_code) == (Outcome.TRANSIENT, None)
    assert failure.error == "finding or creating flow 'dbt': ConnectError: connection refused"

"""The routes file: every mistake stops start-up with a message naming the route and the
field; ``check`` finds what only Prefect can tell; ``simulate`` shows what an event does;
``erathos-template`` lets Erathos skip what no route wants."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from app.cli import erathos_template, main
from app.config import ConfigurationError, Settings
from app.intake.diagnose import simulate
from app.routing.event import ErathosEvent
from app.routing.routes_file import load_routes_file
from app.routing.templates import template_lookup
from app.service import connect
from tests.support.erathos import webhook_body
from tests.support.inprocess import SettingsFactory
from tests.support.tokens import TOKEN
from tools.localprefect import PrefectServer

FINISHED = {"variable_name": "STATUS", "operation": "EQUAL", "value": "FINISHED"}
FLOW = "5d3c35a6-9b1e-4a0e-9a57-2f7f2bd1c0de"


def settings_for(
    make_settings: SettingsFactory, tmp_path: Path, document: Any, **more: Any
) -> Settings:
    path = tmp_path / "routes.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return make_settings(routes_file=path, **more)


def load(settings: Settings) -> Any:
    assert settings.routes_file is not None
    return load_routes_file(settings.routes_file, settings, template_lookup(settings))


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "is not valid JSON"),
        ({"routes": []}, "routes: give at least one route (or a set)"),
        (
            {"routes": [{"name": "a", "flow_id": FLOW, "colour": "red"}]},
            "routes[0] (a).colour: is not a known field",
        ),
        ({"routes": [{"name": "a"}]}, "routes[0] (a): give exactly one target"),
        (
            {"routes": [{"name": "a", "flow_id": FLOW, "deployment_id": FLOW}]},
            "(got deployment_id, flow_id)",
        ),
        (
            {"routes": [{"name": "a", "deployment": "no-slash"}]},
            "routes[0] (a).deployment: must be 'flow-name/deployment-name'",
        ),
        (
            {"routes": [{"name": "a", "flow_id": "x"}]},
            "routes[0] (a).flow_id: Input should be a valid UUID",
        ),
        (
            {"routes": [{"name": "a b", "flow_id": FLOW}]},
            "routes[0] (a b).name: must be 1-100 letters",
        ),
        (
            {"routes": [{"name": "a", "flow_id": FLOW}, {"name": "a", "flow_id": FLOW}]},
            "routes[1] (a).name: another route has this name",
        ),
        (
            {
                "routes": [
                    {
                        "name": "a",
                        "flow_id": FLOW,
                        "rules": [{"variable_name": "ROWS", "operation": "EQUAL", "value": "x"}],
                    }
                ]
            },
            "routes[0] (a).rules[0].value: 'x' is not a valid integer",
        ),
        (
            {
                "routes": [
                    {
                        "name": "a",
                        "flow_id": FLOW,
                        "rules": [
                            {"variable_name": "STATUS", "operation": "LESS_THAN", "value": "A"}
                        ],
                    }
                ]
            },
            "routes[0] (a).rules[0].operation: LESS_THAN is not allowed for STATUS",
        ),
        (
            {
                "routes": [
                    {
                        "name": "a",
                        "flow_id": FLOW,
                        "rules": [{"variable_name": "COLOUR", "operation": "EQUAL", "value": "A"}],
                    }
                ]
            },
            "routes[0] (a).rules[0].variable_name",
        ),
        (
            {
                "routes": [
                    {"name": "a", "flow_id": FLOW, "flow_run": {"name": "${{erathos.tabel_name}}"}}
                ]
            },
            "routes[0] (a).flow_run.name: ${{erathos.tabel_name}} is not Erathos metadata",
        ),
        (
            {
                "routes": [
                    {
                        "name": "a",
                        "flow_id": FLOW,
                        "flow_run": {"parameters": {"x": "${{variables.NOPE_NOT_SET}}"}},
                    }
                ]
            },
            "routes[0] (a).flow_run.parameters.x: ${{variables.NOPE_NOT_SET}} names no variable",
        ),
        (
            {
                "routes": [
                    {
                        "name": "a",
                        "flow_id": FLOW,
                        "flow_run": {"parameters": {"x": "${{secrets.PREFECT_API_KEY}}"}},
                    }
                ]
            },
            "a flow run never carries a secret",
        ),
        (
            {"routes": [{"name": "a", "flow_id": FLOW, "connection": "cloud"}]},
            "routes[0] (a).connection: 'cloud' is not one of the connections",
        ),
        (
            {
                "connections": {"cloud": {"api_url": "https://x/api", "api_key": "pnu_inline"}},
                "routes": [{"name": "a", "flow_id": FLOW, "connection": "cloud"}],
            },
            "connections.cloud.api_key: credentials are never written inline",
        ),
        (
            {
                "connections": {
                    "cloud": {
                        "api_url": "https://x/api",
                        "api_key": "${{secrets.NOT_SET_ANYWHERE}}",
                    }
                },
                "routes": [{"name": "a", "flow_id": FLOW, "connection": "cloud"}],
            },
            "connections.cloud.api_key: ${{secrets.NOT_SET_ANYWHERE}} names no secret",
        ),
        (
            {
                "connections": {"default": {"api_url": "https://x/api"}},
                "routes": [{"name": "a", "flow_id": FLOW}],
            },
            "connections.default: 'default' is the connection of the environment",
        ),
        (
            {
                "connections": {"c": {}},
                "routes": [{"name": "a", "flow_id": FLOW, "connection": "c"}],
            },
            "connections.c: give api_url, or account_id and workspace_id",
        ),
    ],
)
def test_every_mistake_stops_start_up_naming_the_route_and_field(
    make_settings: SettingsFactory, tmp_path: Path, document: Any, message: str
) -> None:
    settings = settings_for(make_settings, tmp_path, document, prefect_api_key="pnu_inline")

    with pytest.raises(ConfigurationError) as caught:
        load(settings)

    assert str(caught.value).startswith("BRIDGE_ROUTES_FILE: ")
    assert message in str(caught.value)
    assert "pnu_inline" not in str(caught.value)


def test_a_route_without_a_connection_needs_the_environments_prefect(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = settings_for(
        make_settings, tmp_path, {"routes": [{"name": "a", "flow_id": FLOW}]}, prefect_api_url=None
    )

    with pytest.raises(ConfigurationError, match=r"routes\[0\] \(a\).connection: none given"):
        load(settings)


def test_connections_take_variables_secrets_and_cloud_ids(
    make_settings: SettingsFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUD_ACCOUNT", "0f6a9b9e-3a8c-4c43-9a57-1d0c5c0b6a11")
    monkeypatch.setenv("CLOUD_API_KEY", "pnu_from_the_environment")
    document = {
        "connections": {
            "cloud": {
                "account_id": "${{variables.cloud_account}}",
                "workspace_id": "7c2d4e1f-5b6a-4f8e-8d9c-2a1b3c4d5e6f",
                "api_key": "${{secrets.cloud_api_key}}",
            },
            "onprem": {"api_url": "prefect.internal", "auth_string": "${{secrets.cloud_api_key}}"},
        },
        "routes": [{"name": "a", "flow_id": FLOW, "connection": "cloud"}],
    }

    routing = load(settings_for(make_settings, tmp_path, document))

    cloud, onprem = routing.connections["cloud"], routing.connections["onprem"]
    assert cloud.api_url == (
        "https://api.prefect.cloud/api/accounts/0f6a9b9e-3a8c-4c43-9a57-1d0c5c0b6a11"
        "/workspaces/7c2d4e1f-5b6a-4f8e-8d9c-2a1b3c4d5e6f"
    )
    assert cloud.api_key is not None
    assert cloud.api_key.get_secret_value() == "pnu_from_the_environment"
    assert onprem.api_url == "https://prefect.internal/api"
    assert "pnu_from_the_environment" not in repr(routing)


@pytest.mark.anyio
async def test_simulate_shows_matches_reasons_and_the_exact_masked_request(
    make_settings: SettingsFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUD_API_KEY", "pnu_never_shown")
    document = {
        "connections": {
            "cloud": {
                "api_url": "https://cloud.example/api",
                "api_key": "${{secrets.cloud_api_key}}",
            }
        },
        "routes": [
            {
                "name": "orders",
                "connection": "cloud",
                "rules": [
                    FINISHED,
                    {"variable_name": "ROWS", "operation": "GREATER_THAN", "value": "0"},
                ],
                "deployment": "dbt/prod",
                "flow_run": {"parameters": {"rows": "${{erathos.rows}}"}},
            },
            {
                "name": "empty-loads",
                "rules": [{"variable_name": "ROWS", "operation": "EQUAL", "value": "0"}],
                "flow_id": FLOW,
            },
        ],
    }
    settings = settings_for(make_settings, tmp_path, document)
    routing = load(settings)
    connections = {name: connect(spec, settings) for name, spec in routing.connections.items()}
    event = ErathosEvent.model_validate(webhook_body(rows="7"))

    report = simulate(event, routing.router, connections, template_lookup(settings))
    for connection in connections.values():
        await connection.aclose()

    orders, empty = report["routes"]
    assert orders["matches"] is True
    assert (
        orders["request"]["url"]
        == "https://cloud.example/api/deployments/<id of dbt/prod>/create_flow_run"
    )
    assert orders["request"]["body"]["parameters"] == {"rows": 7}
    assert orders["request"]["body"]["idempotency_key"] == f"{event.execution_id}:orders"
    assert orders["request"]["headers"]["authorization"] == "Bearer ********"
    assert empty == {
        "route": "empty-loads",
        "matches": False,
        "reason": "ROWS EQUAL '0' does not hold (ROWS is '7')",
    }
    assert "pnu_never_shown" not in json.dumps(report)


def test_the_erathos_template_asks_erathos_for_the_routes_jobs_and_common_rules(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    jobs = [str(uuid.uuid4()), str(uuid.uuid4())]
    document = {
        "routes": [
            {
                "name": "a",
                "jobs": [jobs[0]],
                "rules": [
                    FINISHED,
                    {"variable_name": "ROWS", "operation": "GREATER_THAN", "value": "0"},
                ],
                "flow_id": FLOW,
            },
            {"name": "b", "jobs": [jobs[1]], "rules": [FINISHED], "flow_id": FLOW},
        ]
    }
    settings = settings_for(make_settings, tmp_path, document)

    definition = erathos_template(settings, "https://bridge.example.com")

    assert definition["jobs"] == sorted(jobs)
    assert definition["rules"] == [FINISHED]


@pytest.mark.parametrize("emitted_by", ["BRIDGE_PREFECT_EVENTS", "a connection's events"])
def test_the_erathos_template_asks_for_every_load_when_loads_become_prefect_events(
    make_settings: SettingsFactory, tmp_path: Path, emitted_by: str
) -> None:
    """The routes want FINISHED loads only, but every load is emitted as a Prefect event:
    Erathos must send the FAILED ones too, so the template carries no rule."""
    document: dict[str, Any] = {
        "routes": [{"name": "a", "rules": [FINISHED], "flow_id": FLOW}],
    }
    more: dict[str, Any] = {}
    if emitted_by == "BRIDGE_PREFECT_EVENTS":
        more["prefect_events"] = True
    else:
        document["connections"] = {"cloud": {"api_url": "http://127.0.0.1:9/api", "events": True}}
    settings = settings_for(make_settings, tmp_path, document, **more)

    definition = erathos_template(settings, "https://bridge.example.com")

    assert definition["rules"] == []


def test_check_names_the_route_whose_parameters_fail_the_deployment_schema(
    make_settings: SettingsFactory,
    tmp_path: Path,
    prefect: PrefectServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flow = f"dbt-{uuid.uuid4().hex[:8]}"
    flow_id = prefect.create_flow(flow)
    prefect.create_deployment(
        flow_id,
        "prod",
        parameter_openapi_schema={
            "type": "object",
            "properties": {"rows": {"type": "integer"}},
            "required": ["rows"],
        },
        enforce_parameter_schema=True,
    )
    document = {
        "routes": [
            {
                "name": "good",
                "deployment": f"{flow}/prod",
                "flow_run": {"parameters": {"rows": "${{erathos.rows}}"}},
            },
            {
                "name": "stringly",
                "deployment": f"{flow}/prod",
                "flow_run": {"parameters": {"rows": "${{erathos.table_name}}"}},
            },
            {"name": "missing", "deployment": f"{flow}/staging"},
            {"name": "bare", "flow_id": flow_id},
        ]
    }
    path = tmp_path / "routes.json"
    path.write_text(json.dumps(document))
    for name in [n for n in os.environ if n.startswith(("PREFECT_", "BRIDGE_"))]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secrets").mkdir()
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", str(tmp_path / "secrets"))
    monkeypatch.setenv("BRIDGE_WEBHOOK_TOKEN", TOKEN)
    monkeypatch.setenv("PREFECT_API_URL", prefect.api_url)
    monkeypatch.setenv("BRIDGE_ROUTES_FILE", str(path))
    monkeypatch.setenv("BRIDGE_DATABASE_URL", f"sqlite:///{tmp_path / 'bridge.db'}")

    code = main(["check"])

    out = capsys.readouterr()
    assert code == 1
    assert "route 'good': ok" in out.out
    assert (
        "route 'stringly': FAILED: flow_run.parameters: rows: 'orders' is not of type 'integer'"
        in out.out
    )
    assert f"route 'missing': FAILED: deployment {flow}/staging does not exist" in out.out
    assert "route 'bare': ok" in out.out

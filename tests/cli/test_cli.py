"""The command line: the Erathos template, ``check`` against a real Prefect, events, replay."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from app.cli import main
from app.config import load_settings
from app.routing.event import METADATA
from app.service import open_bridge
from app.storage.records import EventState
from tests.support.erathos import webhook_body
from tests.support.inprocess import open_client
from tests.support.processes import ServiceProcess, fast_service_environment
from tests.support.setfiles import write_routes
from tests.support.tokens import TOKEN, auth
from tests.support.waiting import eventually
from tools.localprefect import PrefectServer

JOB = "6b0f4a52-8d3e-4f5a-9c1b-2e7d8f9a0b1c"


@pytest.fixture
def environment(cli_environment: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    cli_environment.setenv("BRIDGE_POLL_INTERVAL", "100ms")
    # A failure bound: the webhook's answer says Prefect's refusal even when a busy
    # machine makes Prefect take seconds to give it.
    cli_environment.setenv("BRIDGE_SYNC_WAIT", "20s")
    return cli_environment


def test_the_erathos_template_has_erathos_shape_and_every_metadata_field(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    environment.delenv("BRIDGE_WEBHOOK_TOKEN")  # nothing about Prefect or tokens is needed
    environment.setenv("BRIDGE_JOBS", JOB)

    code = main(["erathos-template", "--url", "https://bridge.example.com/"])

    definition = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(definition) == {
        "description",
        "is_active",
        "method",
        "url",
        "header",
        "body",
        "rules",
        "jobs",
    }
    assert definition["method"] == "POST"
    assert definition["url"] == "https://bridge.example.com/webhooks/erathos"
    assert (
        definition["header"]["Authorization"] == "Bearer ${{secrets.erathos_prefect_bridge_token}}"
    )
    assert definition["body"] == {name: f"${{{{erathos.{name}}}}}" for name in METADATA}
    assert definition["jobs"] == [JOB]


def test_the_erathos_template_refuses_a_job_id_that_is_not_a_uuid(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    environment.setenv("BRIDGE_JOBS", "orders")

    code = main(["erathos-template", "--url", "https://bridge.example.com"])

    assert code == 2
    assert "BRIDGE_JOBS" in capsys.readouterr().err


def test_a_configuration_error_exits_2_naming_the_variable(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    environment.setenv("PREFECT_API_URL", "http://prefect:4200/api")
    environment.setenv("PREFECT_FLOW_ID", "not-a-uuid")

    code = main(["check"])

    assert code == 2
    assert "PREFECT_FLOW_ID" in capsys.readouterr().err


def test_check_passes_against_a_real_prefect_with_the_flow(
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    prefect: PrefectServer,
    flow_id: str,
) -> None:
    environment.setenv("PREFECT_API_URL", prefect.api_url)
    environment.setenv("PREFECT_FLOW_ID", flow_id)

    code = main(["check"])

    assert code == 0, capsys.readouterr()
    assert "check passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("api_url", "expected"),
    [
        (None, "does not exist"),
        ("http://127.0.0.1:9/api", "unreachable"),
    ],
)
def test_check_fails_clearly_when_prefect_or_the_flow_is_missing(
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    prefect: PrefectServer,
    api_url: str | None,
    expected: str,
) -> None:
    environment.setenv("PREFECT_API_URL", api_url or prefect.api_url)
    environment.setenv("PREFECT_FLOW_ID", str(uuid.uuid4()))

    code = main(["check"])

    out = capsys.readouterr()
    assert code == 1
    assert expected in out.out
    assert "check FAILED" in out.err


def test_check_shows_the_id_of_the_flow_it_finds_by_name(
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    prefect: PrefectServer,
) -> None:
    name = f"dbt-{uuid.uuid4().hex[:10]}"
    environment.setenv("PREFECT_API_URL", prefect.api_url)
    environment.setenv("PREFECT_FLOW_NAME", name)

    assert main(["check"]) == 0  # not there yet: the first delivery creates it
    before = capsys.readouterr().out
    flow_id = prefect.create_flow(name)
    assert main(["check"]) == 0
    after = capsys.readouterr().out

    assert f"route 'default': ok: flow '{name}' does not exist yet" in before
    assert f"route 'default': ok: flow '{name}' exists ({flow_id})" in after


def test_check_suggests_api_when_the_url_answers_404(
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    prefect: PrefectServer,
    flow_id: str,
) -> None:
    server = prefect.api_url.removesuffix("/api")  # http://127.0.0.1:<port>, no /api
    environment.setenv("PREFECT_API_URL", server)
    environment.setenv("PREFECT_FLOW_ID", flow_id)

    code = main(["check"])

    out = capsys.readouterr()
    assert code == 1
    assert (
        f"prefect connection 'default' ({server}): "
        f"HTTP 404 at {server}/health: did you mean {server}/api?"
    ) in out.out


def test_commands_other_than_serve_never_log_service_ready(
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    prefect: PrefectServer,
    flow_id: str,
    tmp_path: Path,
) -> None:
    environment.setenv("PREFECT_API_URL", prefect.api_url)
    environment.setenv("PREFECT_FLOW_ID", flow_id)
    event = tmp_path / "event.json"
    event.write_text(json.dumps(webhook_body()))

    codes = [main(["check"]), main(["events"]), main(["simulate", str(event)])]

    assert codes == [0, 0, 0]
    assert "service ready" not in capsys.readouterr().err


@pytest.mark.slow
def test_serve_logs_service_ready_once_it_listens(
    tmp_path: Path, prefect: PrefectServer, flow_id: str
) -> None:
    routes_file = write_routes(
        tmp_path / "routes.json", "shop", ["orders", "payments"], {"within": "1h"}
    )
    document = json.loads(routes_file.read_text())
    routes_file.write_text(json.dumps(document | {"routes": [{"name": "dbt", "flow_id": flow_id}]}))
    env = fast_service_environment(
        prefect.api_url,
        flow_id,
        f"sqlite:///{tmp_path / 'b.db'}",
        BRIDGE_ROUTES_FILE=str(routes_file),
    )
    service = ServiceProcess(env, tmp_path, tmp_path / "service.log")
    try:
        service.start()
        asyncio.run(_wait_for_line(service.log_path, "service ready"))
    finally:
        service.stop()

    lines = [json.loads(line) for line in service.log_path.read_text().splitlines()]
    messages = [line["msg"] for line in lines]
    listening = next(i for i, m in enumerate(messages) if m.startswith("Uvicorn running on"))
    [ready] = [i for i, m in enumerate(messages) if m == "service ready"]
    assert ready > listening
    assert lines[ready]["port"] == int(env["BRIDGE_PORT"])
    assert (lines[ready]["routes"], lines[ready]["sets"]) == (["dbt"], ["shop"])


async def _wait_for_line(path: Path, text: str) -> None:
    await eventually(lambda: text in path.read_text(), within=10, what=f"{text!r} logged")


def test_events_lists_dead_letters_and_replay_sends_them_again(
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    prefect: PrefectServer,
    flow_id: str,
) -> None:
    environment.setenv("PREFECT_API_URL", prefect.api_url)
    environment.setenv("PREFECT_FLOW_ID", str(uuid.uuid4()))  # unknown to Prefect: 409
    execution_id = str(uuid.uuid4())
    asyncio.run(_send(execution_id))
    capsys.readouterr()

    assert main(["events", "--state", "dead", "--json"]) == 0
    [dead] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert dead["execution_id"] == execution_id
    assert "HTTP 409" in dead["deliveries"][0]["error"]

    environment.setenv("PREFECT_FLOW_ID", flow_id)  # the fix
    assert main(["replay", dead["event_id"]]) == 0
    assert "pending again" in capsys.readouterr().out
    asyncio.run(_settle())

    [run] = prefect.flow_runs(flow_id)
    assert run["idempotency_key"] == execution_id


def test_events_and_replay_need_only_the_database_setting(
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    prefect: PrefectServer,
) -> None:
    environment.setenv("PREFECT_API_URL", prefect.api_url)
    environment.setenv("PREFECT_FLOW_ID", str(uuid.uuid4()))  # unknown to Prefect: dead
    execution_id = str(uuid.uuid4())
    asyncio.run(_send(execution_id))
    capsys.readouterr()
    # Elsewhere, with nothing configured but where the store is: no token, no Prefect.
    for name in ("BRIDGE_WEBHOOK_TOKEN", "PREFECT_API_URL", "PREFECT_FLOW_ID"):
        environment.delenv(name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment.chdir(elsewhere)

    listed = main(["events", "--json"])
    [event] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    replayed = main(["replay", event["event_id"]])

    assert listed == 0
    assert event["execution_id"] == execution_id
    assert replayed == 0
    assert "pending again" in capsys.readouterr().out


def test_serve_lists_every_missing_setting_at_once(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    environment.delenv("BRIDGE_WEBHOOK_TOKEN")

    code = main(["serve"])

    lines = capsys.readouterr().err.splitlines()
    assert code == 2
    assert [line.split(": ")[2] for line in lines] == [
        "BRIDGE_WEBHOOK_TOKEN",
        "PREFECT_API_URL",
        "PREFECT_FLOW_ID",
    ]
    assert all(line.startswith("erathos-prefect-bridge: configuration error: ") for line in lines)


async def _send(execution_id: str) -> None:
    async with open_client(load_settings()) as client:
        body = webhook_body(execution_id=execution_id)
        response = await client.post("/webhooks/erathos", json=body, headers=auth())
        assert response.json()["status"] == "failed"


async def _settle() -> None:
    """Run the service until nothing is pending (what a running service does by itself)."""
    async with open_bridge(load_settings()) as bridge:

        async def settled() -> bool:
            return not await bridge.history.list_events(state=EventState.PENDING, limit=1)

        await eventually(settled, within=30, what="every delivery settled")


def test_check_and_simulate_never_print_a_configured_secret(
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    prefect: PrefectServer,
    flow_id: str,
    tmp_path: Path,
) -> None:
    secrets = {
        "BRIDGE_ADMIN_TOKEN": "admin-secret-value-0123456789",
        "PREFECT_API_AUTH_STRING": "user:auth-secret-value-0123",
    }
    for name, value in secrets.items():
        environment.setenv(name, value)
    environment.setenv("PREFECT_API_URL", prefect.api_url)
    environment.setenv("PREFECT_FLOW_ID", flow_id)
    event = tmp_path / "event.json"
    event.write_text(json.dumps(webhook_body()))

    assert main(["simulate", str(event)]) == 0
    assert main(["check"]) == 0
    environment.setenv(  # a store that cannot be reached: its error names no password
        "BRIDGE_DATABASE_URL", "postgresql://bridge:db-password-0123@127.0.0.1:9/bridge"
    )
    assert main(["events"]) == 1

    out = capsys.readouterr()
    printed = out.out + out.err
    assert '"authorization": "Basic ********"' in printed  # simulate showed the request
    assert "check passed" in printed
    assert "the store cannot be used" in printed
    for value in [*secrets.values(), TOKEN, "auth-secret-value", "db-password-0123"]:
        assert value not in printed

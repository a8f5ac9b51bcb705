"""The newcomer mode (``python3 tools/dev.py run`` with nothing configured): the curl it
prints ends in a COMPLETED flow run of the example flow, served by Prefect itself; its
settings go where the CLI finds them, never over the user's own ``.env``; Prefect gets
its port back after a quick restart."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.inprocess import SettingsFactory, open_client
from tests.support.tokens import ADMIN_TOKEN, TOKEN, auth
from tests.support.waiting import delivered_by, eventually
from tools import dev
from tools.localprefect import EXAMPLE_ROUTES, PrefectServer, ServedFlow

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture
def example_flow(prefect: PrefectServer, tmp_path: Path) -> Iterator[ServedFlow]:
    """examples/flows/erathos_dbt.py served from the Prefect server's environment."""
    served = ServedFlow(prefect, home=tmp_path / "flow-home", log_path=tmp_path / "flow.log")
    served.start()
    try:
        yield served
    finally:
        served.stop()


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_printed_curl_ends_in_a_completed_run_of_the_example_flow(
    make_settings: SettingsFactory, prefect: PrefectServer, example_flow: ServedFlow
) -> None:
    settings = make_settings(
        prefect_api_url=prefect.api_url, routes_file=EXAMPLE_ROUTES, admin_token=ADMIN_TOKEN
    )
    body = dev.example_body()  # the body of the curl the newcomer mode prints

    async with open_client(settings) as client:
        answer = await client.post("/webhooks/erathos", json=body, headers=auth(TOKEN))

        assert answer.status_code == 202, answer.text
        # "queued" when the served flow's own writes made Prefect answer 503 at first.
        assert answer.json()["status"] in ("delivered", "queued"), answer.text
        [delivery] = (await delivered_by(client, answer.json()["event_id"]))["deliveries"]
        run_id = delivery["flow_run_id"]
        assert delivery["flow_run_url"].endswith(f"/runs/flow-run/{run_id}")

        def run() -> dict[str, Any]:
            found: dict[str, Any] = prefect.request("GET", f"flow_runs/{run_id}")
            return found

        def finished() -> bool:
            return run()["state"]["type"] in TERMINAL

        await eventually(finished, within=60, what="the example flow's run finished", every=0.5)

    flow_run = run()
    log = example_flow.log_path
    assert flow_run["state"]["type"] == "COMPLETED", log.read_text()[-3000:] if log else ""
    assert flow_run["deployment_id"] == example_flow.deployment_id
    assert flow_run["parameters"] == {
        "execution_id": body["execution_id"],
        "table_name": "orders",
        "schema_name": "raw_shop",
        "rows": 1520,  # an integer, as the flow's parameter is typed
        "status": "FINISHED",
        "finished_at_date": body["finished_at_date"],
        "finished_at_time": f"{body['finished_at_time']}:00",  # ISO 8601, as in the event
    }


@pytest.fixture
def project(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty project directory as the current one, with no setting in the environment."""
    for name in list(os.environ):
        if name.startswith(("PREFECT_", "BRIDGE_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


SETTINGS = {"PREFECT_API_URL": "http://127.0.0.1:4200/api", "BRIDGE_ROUTES_FILE": "x.json"}


def test_the_newcomer_dotenv_is_written_private_and_is_not_a_real_setting(project: Path) -> None:
    assert dev.write_newcomer_dotenv(SETTINGS)

    dotenv = project / ".env"
    assert dotenv.stat().st_mode & 0o777 == 0o600
    assert "PREFECT_API_URL=http://127.0.0.1:4200/api" in dotenv.read_text().splitlines()
    # The next run is a newcomer run again, and rewrites it.
    assert dev.setting("PREFECT_API_URL") == ""
    assert dev.write_newcomer_dotenv(SETTINGS | {"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert "PREFECT_API_URL=http://127.0.0.1:9/api" in dotenv.read_text().splitlines()


def test_a_dotenv_the_user_wrote_is_never_touched_and_counts(project: Path) -> None:
    mine = "PREFECT_API_URL=http://prefect:4200/api\n"
    (project / ".env").write_text(mine)

    assert not dev.write_newcomer_dotenv(SETTINGS)

    assert (project / ".env").read_text() == mine
    assert dev.setting("PREFECT_API_URL") == "http://prefect:4200/api"  # not a newcomer run


def test_generated_tokens_are_kept_private_and_reused(project: Path) -> None:
    path = project / "data" / "dev-admin-token"

    token = dev.dev_token("BRIDGE_ADMIN_TOKEN", path)

    assert len(token) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert dev.dev_token("BRIDGE_ADMIN_TOKEN", path) == token


def test_a_port_just_released_by_a_server_is_free_again() -> None:
    # The server side closes first, as a stopping server does: its end of the
    # connection stays in TIME_WAIT on the port.
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()
            assert client.recv(1) == b""  # the server's FIN
        assert not dev.port_is_free(port)  # still listening
    assert dev.port_is_free(port)

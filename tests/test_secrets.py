"""Prefect credentials never leave in any form, even when the upstream (Prefect, or a proxy
or WAF before it) echoes the request's headers back: not in readiness, the webhook's or
a drop-in call's answer, the admin API's attempts, the logs, nor ``check``'s output."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app.cli import main
from app.logs import configure_logging
from tests.conftest import ADMIN_TOKEN, SettingsFactory, auth, open_client
from tests.erathos import webhook_body

pytestmark = pytest.mark.anyio

API_KEY = "pnu_" + uuid.uuid4().hex
AUTH_STRING = "admin:pw-" + uuid.uuid4().hex
CREDENTIALS = {
    "an api key": {"prefect_api_key": API_KEY},
    "an auth string": {"prefect_api_auth_string": AUTH_STRING},
}
# Every form a credential takes on the wire or in a header.
FORMS = [
    API_KEY,
    AUTH_STRING,
    AUTH_STRING.partition(":")[2],
    base64.b64encode(AUTH_STRING.encode()).decode(),
]


class _Echo(BaseHTTPRequestHandler):
    """Answers every request 400, its body the request's headers (as a misconfigured
    proxy or a WAF does)."""

    protocol_version = "HTTP/1.1"

    def _echo(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = dict(self.headers.items())
        body = json.dumps({"detail": f"bad request, you sent {headers}"}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _echo

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[str]:
    """The echoing upstream's API URL, served from a thread of its own."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("credentials", list(CREDENTIALS), ids=list(CREDENTIALS))
async def test_credentials_echoed_by_the_upstream_are_masked_everywhere_they_show(
    make_settings: SettingsFactory,
    echo: str,
    capsys: pytest.CaptureFixture[str],
    credentials: str,
) -> None:
    configure_logging("json", "DEBUG")
    flow_id = str(uuid.uuid4())
    settings = make_settings(
        prefect_api_url=echo,
        prefect_flow_id=flow_id,
        admin_token=ADMIN_TOKEN,
        dropin=True,
        **CREDENTIALS[credentials],
    )
    shown: list[str] = []

    async with open_client(settings) as client:
        ready = await client.get("/readyz")
        webhook = await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
        dropped_in = await client.post(
            "/api/flow_runs/", json={"idempotency_key": "k-1", "flow_id": flow_id}, headers=auth()
        )
        events = (await client.get("/events", headers=auth(ADMIN_TOKEN))).json()["events"]
        for event in events:
            detail = await client.get(f"/events/{event['id']}", headers=auth(ADMIN_TOKEN))
            shown.append(detail.text)
    shown += [ready.text, webhook.text, dropped_in.text]

    # The upstream did echo the credentials, and they arrive masked.
    assert "'Authorization': '" in ready.json()["prefect"][0]["detail"]
    assert "********" in ready.json()["prefect"][0]["detail"]
    assert dropped_in.status_code == 400  # Prefect's own answer, passed on
    assert "********" in dropped_in.text
    [attempt] = [
        a
        for text in shown
        if text.startswith("{") and "attempts_made" in text
        for d in json.loads(text)["deliveries"]
        for a in d["attempts_made"]
        if d["route"] == "default"
    ]
    assert "********" in attempt["response_excerpt"]
    logs = capsys.readouterr()
    shown += [logs.out, logs.err]
    for text in shown:
        for form in FORMS:
            assert form not in text


@pytest.mark.parametrize("credentials", list(CREDENTIALS), ids=list(CREDENTIALS))
def test_check_masks_credentials_an_upstream_echoes(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    echo: str,
    credentials: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    variables = {
        "BRIDGE_WEBHOOK_TOKEN": "test-webhook-token-0123456789",
        "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.db'}",
        "BRIDGE_SECRETS_DIR": str(tmp_path),
        "BRIDGE_LOG_FORMAT": "json",
        "PREFECT_API_URL": echo,
        "PREFECT_FLOW_ID": str(uuid.uuid4()),
    }
    variables |= {
        "PREFECT_API_KEY" if credentials == "an api key" else "PREFECT_API_AUTH_STRING": (
            API_KEY if credentials == "an api key" else AUTH_STRING
        )
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    assert main(["check"]) == 1  # the upstream refuses everything

    out = capsys.readouterr()
    printed = out.out + out.err
    assert "********" in printed  # echoed, and masked
    for form in FORMS:
        assert form not in printed

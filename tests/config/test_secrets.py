"""Prefect credentials never leave in any form, even when the upstream (Prefect, or a proxy
or WAF before it) echoes the request's headers back, decoded and encoded again: not in
readiness, the webhook's or a drop-in call's answer, the admin API's attempts, the
console's pages, the logs, nor ``check``'s output; not even cut short."""

from __future__ import annotations

import base64
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import structlog

from app.cli import main
from app.logs import configure_logging
from app.masking import Masker
from app.service import configured_secrets
from tests.support.console import sign_in
from tests.support.erathos import webhook_body
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.tokens import ADMIN_TOKEN, auth

pytestmark = pytest.mark.anyio

# Characters that each encoding writes its own way: URL-reserved ones in the key, and in
# the password a quote, a backslash and a non-ASCII letter (JSON escapes all three).
API_KEY = "pnu_" + uuid.uuid4().hex + "/+&="
USER = "admin-user"
PASSWORD = "pw-" + uuid.uuid4().hex + '"\\\u00fc'
AUTH_STRING = f"{USER}:{PASSWORD}"
CREDENTIALS = {
    "an api key": {"prefect_api_key": API_KEY},
    "an auth string": {"prefect_api_auth_string": AUTH_STRING},
}
# Where the echo puts the credentials in Prefect's "detail": across character 500, where
# the service cuts an error message short.
CUT_AT = 470


def encodings(text: str) -> list[str]:
    """``text`` raw, URL-encoded (both ways), in base64, and that base64 URL-encoded."""
    encoded = base64.b64encode(text.encode()).decode()
    return [text, quote(text, safe=""), quote_plus(text), encoded, quote(encoded, safe="")]


def forms() -> list[str]:
    """Every form of every part of both credentials: each encoding, and each of those
    JSON-escaped (as JSON text keeps it, and as a log line, not ASCII-only, does)."""
    found = []
    for part in (API_KEY, AUTH_STRING, USER, PASSWORD):
        for text in encodings(part):
            found += [text, json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]]
    # What a secret cut at character 500 would leave: the start of the password or key.
    return [*dict.fromkeys(found), PASSWORD[:12], API_KEY[:16]]


FORMS = forms()


class _Echo(BaseHTTPRequestHandler):
    """Answers every request 400, its body the request's credentials, decoded and encoded
    again every way (as a misconfigured proxy or a WAF may), and once more in the middle
    of Prefect's ``detail``."""

    protocol_version = "HTTP/1.1"

    def _echo(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        sent = base64.b64decode(value).decode() if scheme == "Basic" else value
        user, _, password = sent.rpartition(":") if scheme == "Basic" else ("", "", "")
        echoed = [header, *encodings(sent)]
        echoed += [form for part in (user, password) if part for form in encodings(part)]
        detail = "bad request: " + "." * (CUT_AT - 13) + f"{sent} was sent"
        body = json.dumps({"echo": echoed, "detail": detail}).encode()
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
        brief = await client.get("/readyz")
        ready = await client.get("/readyz", headers=auth(ADMIN_TOKEN))
        webhook = await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
        dropped_in = await client.post(
            "/api/flow_runs/", json={"idempotency_key": "k-1", "flow_id": flow_id}, headers=auth()
        )
        events = (await client.get("/events", headers=auth(ADMIN_TOKEN))).json()["events"]
        for event in events:
            detail = await client.get(f"/events/{event['id']}", headers=auth(ADMIN_TOKEN))
            shown.append(detail.text)
        await sign_in(client)
        for page in ["/ui/", "/ui/dead", *(f"/ui/events/{event['id']}" for event in events)]:
            shown.append((await client.get(page)).text)
    shown += [brief.text, ready.text, webhook.text, dropped_in.text, json.dumps(events)]

    # The upstream did echo the credentials, and they arrive masked.
    assert brief.json() == {"ready": True, "reason": "prefect_not_usable"}
    # Masked, then cut short: the mask stands where the secret began, before character 500.
    assert "******** was sent" in ready.json()["prefect"][0]["detail"]
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
            assert form not in text, form


def test_every_encoding_of_every_part_of_a_secret_is_masked() -> None:
    masker = Masker([AUTH_STRING, API_KEY])

    for form in FORMS[:-2]:
        masked = masker.mask(f"before {form} after")
        assert masked == "before ******** after", form
    # Masked before it is cut: what is left of a secret is never its start.
    assert masker.cut("x" * 10 + AUTH_STRING, 20) == "x" * 10 + "********"


def test_a_log_line_never_shows_a_password_with_quotes_backslashes_and_accents(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(prefect_api_auth_string=AUTH_STRING)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("json", "INFO", configured_secrets(settings))
        structlog.stdlib.get_logger("test").warning("careless", password=PASSWORD)
        logging.getLogger("uvicorn.error").error("careless too: %s", AUTH_STRING)
        text = capsys.readouterr().err
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        structlog.reset_defaults()

    lines = [json.loads(line) for line in text.splitlines()]
    assert [line.get("password") for line in lines] == ["********", None]
    assert lines[1]["msg"] == "careless too: ********"
    assert not [form for form in FORMS if form in text]


async def test_readiness_tells_anyone_only_ready_and_a_reason_the_details_need_a_token(
    make_settings: SettingsFactory, echo: str
) -> None:
    metrics_token = "test-metrics-token-0123456789"
    settings = make_settings(
        prefect_api_url=echo, admin_token=ADMIN_TOKEN, metrics_token=metrics_token
    )
    async with open_client(settings) as client:
        anyone = await client.get("/readyz")
        metrics = await client.get("/readyz", headers=auth(metrics_token))
        admin = await client.get("/readyz", headers=auth(ADMIN_TOKEN))
        wrong = await client.get("/readyz", headers=auth("x" * 30))

    assert (anyone.status_code, anyone.json()) == (
        200,
        {"ready": True, "reason": "prefect_not_usable"},
    )
    for answer in (metrics, admin):
        assert answer.status_code == 200
        assert answer.json()["reason"] == "prefect_not_usable"
        [prefect] = answer.json()["prefect"]
        assert (prefect["connection"], prefect["api_url"]) == ("default", echo)
        assert prefect["targets"][0]["route"] == "default"
    assert wrong.status_code == 401


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

"""Logs of a real service process through a full scenario: every line is one JSON object,
the accepted-event and delivery-attempt lines carry the event's identity, the lines of
one request share its request id, and no configured secret appears anywhere: not in
the logs, the HTTP answers, the metrics, nor the stored attempts. And a log sink that
is gone loses lines, never a webhook or a delivery's record."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from app.config import Settings
from app.logs import configure_logging, lost_lines
from app.service import configured_secrets
from app.storage.database import Database
from app.storage.history import History
from app.storage.records import DeliveryState
from tests.support.erathos import webhook_body
from tests.support.inprocess import open_client, stored_events
from tests.support.processes import ServiceProcess, clean_environment, fast_service_environment
from tests.support.tokens import auth
from tools.localprefect import PrefectServer, free_port

UNKNOWN_FLOW = "5d3c35a6-9b1e-4a0e-9a57-2f7f2bd1c0de"
# Each secret is distinctive, so finding it anywhere means it leaked.
WEBHOOK_TOKEN = "wh-" + uuid.uuid4().hex
ROTATED_TOKEN = "wh-old-" + uuid.uuid4().hex
ADMIN_TOKEN = "adm-" + uuid.uuid4().hex
METRICS_TOKEN = "met-" + uuid.uuid4().hex
PREFECT_PASSWORD = "pw-" + uuid.uuid4().hex
LOST_LINES = "erathos_bridge_log_lines_lost_total "
AUTH_STRING = f"bridge:{PREFECT_PASSWORD}"
SECRETS = {
    WEBHOOK_TOKEN,
    ROTATED_TOKEN,
    ADMIN_TOKEN,
    METRICS_TOKEN,
    PREFECT_PASSWORD,
    base64.b64encode(AUTH_STRING.encode()).decode(),  # as the Basic auth header sends it
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def service(tmp_path: Path, prefect: PrefectServer, flow_id: str) -> Any:
    known_job, failing_job = str(uuid.uuid4()), str(uuid.uuid4())
    routes = [
        {"name": "dbt", "jobs": [known_job], "flow_id": flow_id},
        {"name": "typo", "jobs": [failing_job], "flow_id": UNKNOWN_FLOW},
    ]
    routes_file = tmp_path / "routes.json"
    routes_file.write_text(json.dumps({"routes": routes}))
    env = clean_environment(
        PREFECT_API_URL=prefect.api_url,
        PREFECT_API_AUTH_STRING=AUTH_STRING,  # the test server has no auth: sent, ignored
        BRIDGE_ROUTES_FILE=str(routes_file),
        BRIDGE_WEBHOOK_TOKEN=f"{WEBHOOK_TOKEN},{ROTATED_TOKEN}",
        BRIDGE_ADMIN_TOKEN=ADMIN_TOKEN,
        BRIDGE_METRICS_TOKEN=METRICS_TOKEN,
        BRIDGE_PORT=str(free_port()),
        BRIDGE_DATABASE_URL=f"sqlite:///{tmp_path / 'bridge.db'}",
        BRIDGE_LOG_FORMAT="json",
        BRIDGE_LOG_LEVEL="DEBUG",  # every line there is, probes and scrapes too
        BRIDGE_SYNC_WAIT="20s",  # the answer waits for the run even on a busy machine
    )
    process = ServiceProcess(env, tmp_path, tmp_path / "service.log")
    process.start()
    try:
        yield process, known_job, failing_job
    finally:
        process.stop()


def test_a_full_scenario_logs_json_with_identity_and_request_ids_and_no_secret(
    service: Any,
) -> None:
    process, known_job, failing_job = service
    delivered = webhook_body(job_id=known_job, table_name="orders")
    dead = webhook_body(job_id=failing_job, table_name="invoices")
    answers: list[httpx.Response] = []
    with httpx.Client(base_url=process.url, timeout=30) as client:

        def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
            answers.append(client.request(method, path, **kwargs))
            return answers[-1]

        accepted = call(
            "POST",
            "/webhooks/erathos",
            json=delivered,
            headers=bearer(WEBHOOK_TOKEN) | {"X-Request-ID": "erathos-call-1"},
        )
        call("POST", "/webhooks/erathos", json=delivered, headers=bearer(ROTATED_TOKEN))
        failed = call("POST", "/webhooks/erathos", json=dead, headers=bearer(WEBHOOK_TOKEN))
        refused = call(
            "POST", "/webhooks/erathos", json=delivered, headers=bearer("a-wrong-token-0123456789")
        )
        invalid = call(
            "POST",
            "/webhooks/erathos",
            json={"status": "FINISHED"},
            headers=bearer(WEBHOOK_TOKEN) | {"X-Request-ID": "bad id with spaces"},
        )
        call("GET", "/readyz")
        metrics = call("GET", "/metrics", headers=bearer(METRICS_TOKEN))
        details = [
            call("GET", f"/events/{a.json()['event_id']}", headers=bearer(ADMIN_TOKEN))
            for a in (accepted, failed)
        ]
        call("GET", "/events", params={"state": "dead"}, headers=bearer(ADMIN_TOKEN))
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    text = process.log_path.read_text()

    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["status"] == "delivered"
    assert failed.json()["status"] == "failed"
    assert (refused.status_code, invalid.status_code, metrics.status_code) == (401, 422, 200)

    lines = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    by_msg: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        by_msg[line["msg"]].append(line)

    [event_line] = [
        e for e in by_msg["event accepted"] if e["execution_id"] == delivered["execution_id"]
    ]
    assert event_line["job_id"] == known_job
    assert event_line["table_name"] == "orders"
    assert event_line["status"] == "FINISHED"
    assert event_line["routes"] == ["dbt"]
    assert event_line["connections"] == ["default"]
    assert event_line["request_id"] == "erathos-call-1"

    attempts = {a["execution_id"]: a for a in by_msg["delivery attempt"]}
    good, bad = attempts[delivered["execution_id"]], attempts[dead["execution_id"]]
    assert good["level"] == "info"
    assert good["flow_run_id"] == accepted.json()["deliveries"][0]["flow_run_id"]
    assert (good["route"], good["connection"], good["job_id"]) == ("dbt", "default", known_job)
    assert (good["table_name"], good["status_code"], good["state"]) == ("orders", 201, "delivered")
    assert good["duration_ms"] > 0
    assert (bad["level"], bad["status_code"], bad["state"]) == ("error", 409, "dead")
    assert bad["flow_run_id"] is None
    assert "HTTP 409" in bad["error"]

    # The lines of one request share its id; the caller's id is kept when it is sane.
    first_request = [line for line in lines if line.get("request_id") == "erathos-call-1"]
    assert [line["msg"] for line in first_request] == [
        "event accepted",
        "delivery attempt",
        "request",
    ]
    assert accepted.headers["x-request-id"] == "erathos-call-1"
    generated = invalid.headers["x-request-id"]
    assert generated != "bad id with spaces"
    [invalid_line] = [line for line in lines if line.get("request_id") == generated]
    assert (invalid_line["msg"], invalid_line["status"]) == ("request", 422)
    requests = {r["request_id"]: r for r in by_msg["request"]}
    assert len(requests) == len(by_msg["request"])  # one line per request, each its own id
    for answer in answers:
        line = requests[answer.headers["x-request-id"]]
        assert (line["path"], line["status"]) == (answer.url.path, answer.status_code)
    assert {r["path"] for r in requests.values() if r["level"] == "debug"} == {
        "/readyz",
        "/metrics",
    }
    assert by_msg["shutdown: deliveries in flight given back"] == []  # nothing was in flight

    seen = [text, metrics.text] + [a.text + json.dumps(dict(a.headers)) for a in answers]
    seen += [d.text for d in details]
    for secret in SECRETS:
        assert not [s for s in seen if secret in s], "a configured secret leaked"
    stored_attempts = [
        a for d in details for dl in d.json()["deliveries"] for a in dl["attempts_made"]
    ]
    assert len(stored_attempts) == 2


def test_a_secret_that_reaches_a_log_line_anyway_is_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings(
        _env_file=None,
        _secrets_dir=None,
        webhook_tokens=f"{WEBHOOK_TOKEN},{ROTATED_TOKEN}",
        admin_token=ADMIN_TOKEN,
        prefect_api_url="http://127.0.0.1:9/api",
        prefect_api_auth_string=AUTH_STRING,
        prefect_flow_id=UNKNOWN_FLOW,
    )
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("json", "INFO", configured_secrets(settings))
        structlog.stdlib.get_logger("test").warning(
            "careless", detail=f"token {WEBHOOK_TOKEN} and password {PREFECT_PASSWORD}"
        )
        logging.getLogger("uvicorn.error").error("header was Bearer %s", ROTATED_TOKEN)
        text = capsys.readouterr().err
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        structlog.reset_defaults()

    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["msg"] for line in lines] == ["careless", "header was Bearer ********"]
    assert lines[0]["detail"] == "token ******** and password ********"
    assert not [secret for secret in SECRETS if secret in text]


class BrokenPipe:
    """A stderr whose reader has gone (``serve 2>&1 | head -c 1200``, once head exits)."""

    def __init__(self) -> None:
        self.writes = 0
        self.lines = 0  # what the writes carried: a turn of the loop's lines go in one

    def write(self, text: str) -> int:
        self.writes += 1
        self.lines += text.count("\n")
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def isatty(self) -> bool:
        return False


@pytest.mark.anyio
async def test_a_broken_stderr_loses_log_lines_never_a_webhook_or_its_recorded_attempt(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = BrokenPipe()
    monkeypatch.setattr(sys, "stderr", broken)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    lost_before = lost_lines.count
    try:
        configure_logging("json", "INFO")
        async with open_client(settings) as client:
            answer = await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
            logging.getLogger("uvicorn.error").error("a stdlib record, lost as well")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        structlog.reset_defaults()

    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "delivered"
    [(_, [delivery])] = await stored_events(settings)
    assert delivery.state is DeliveryState.DELIVERED
    assert delivery.flow_run_id == answer.json()["deliveries"][0]["flow_run_id"]
    database = await Database.open(settings.database_url)
    try:
        [attempt] = await History(database).attempts_of([delivery.id])
    finally:
        await database.close()
    assert (attempt.outcome, attempt.status_code) == ("delivered", 201)
    assert broken.writes > 0  # the lines were written, and refused
    assert lost_lines.count - lost_before == broken.lines


class Recording:
    """A stderr that keeps each write apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@pytest.mark.anyio
async def test_lines_of_one_turn_of_the_loop_are_written_together_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = Recording()
    monkeypatch.setattr(sys, "stderr", sink)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("json", "INFO")
        log = structlog.get_logger("test")
        log.info("first")
        log.info("second")
        assert sink.writes == []  # not yet: at the loop's next turn
        await asyncio.sleep(0)
        log.info("third")
        logging.getLogger("uvicorn.error").warning("a stdlib record")  # after "third"
        await asyncio.sleep(0)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        structlog.reset_defaults()

    messages = [[json.loads(line)["msg"] for line in w.splitlines()] for w in sink.writes]
    assert messages == [["first", "second"], ["third"], ["a stdlib record"]]


@pytest.mark.slow
def test_started_with_stderr_closed_the_service_serves_and_counts_its_lost_lines(
    tmp_path: Path,
) -> None:
    env = fast_service_environment(
        "http://127.0.0.1:9/api", str(uuid.uuid4()), f"sqlite:///{tmp_path / 'bridge.db'}"
    )
    service = ServiceProcess(env, tmp_path, tmp_path / "service.log")
    # As a shell runs `erathos-prefect-bridge serve 2>&-`: no descriptor 2 at all.
    service.process = subprocess.Popen(
        ["sh", "-c", 'exec "$0" -m app.cli serve 2>&-', sys.executable],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        service.wait_ready()
        with httpx.Client(base_url=service.url, timeout=10) as client:
            answer = client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
            scraped = client.get("/metrics").text
        service.signal(signal.SIGTERM)
        exit_code = service.wait()
    finally:
        service.stop()

    assert answer.status_code == 202, answer.text
    lost = next(line for line in scraped.splitlines() if line.startswith(LOST_LINES))
    assert float(lost.rpartition(" ")[2]) >= 1  # "service ready", "event accepted", ...
    assert exit_code == 0

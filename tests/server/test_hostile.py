"""Hostile input: whatever a client sends, a clean 4xx naming the problem, nothing stored,
no secret revealed, memory bounded, slow clients cut off."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support.erathos import webhook_body
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.processes import ServiceProcess, clean_environment
from tests.support.tokens import ADMIN_TOKEN, TOKEN, auth
from tools.localprefect import free_port

pytestmark = pytest.mark.anyio


def raw(text: str) -> bytes:
    return text.encode()


HOSTILE: list[tuple[str, dict[str, str], bytes, int]] = [
    ("over the cap", {}, json.dumps({**webhook_body(), "pad": "x" * 70_000}).encode(), 413),
    ("deeply nested", {}, raw("[" * 50_000 + "]" * 50_000), 413),
    (
        "nested within the cap",
        {},
        raw('{"execution_id": "e", "x": ' + "[" * 20_000 + "]" * 20_000 + "}"),
        400,
    ),
    (
        "tens of thousands of keys",
        {},
        json.dumps({**webhook_body(), **{f"k{i}": 0 for i in range(4000)}}).encode(),
        422,
    ),
    ("invalid UTF-8", {}, b'{"execution_id": "\xff\xfe"}', 400),
    ("a lone surrogate", {}, raw('{"execution_id": "a", "x": "\\ud800"}'), 400),
    ("duplicate keys", {}, raw('{"execution_id": "a", "execution_id": "b"}'), 400),
    ("same name in two cases", {}, raw('{"execution_id": "a", "EXECUTION_ID": "b"}'), 422),
    ("a huge JSON number", {}, raw('{"execution_id": "a", "rows": ' + "9" * 5000 + "}"), 400),
    (
        "a huge number as a string",
        {},
        json.dumps({**webhook_body(), "rows": "9" * 5000}).encode(),
        422,
    ),
    ("a negative count", {}, json.dumps({**webhook_body(), "rows": "-1"}).encode(), 422),
    ("not an object", {}, raw('["execution_id"]'), 422),
    ("null", {}, raw("null"), 422),
    ("empty", {}, b"", 400),
    ("text/plain", {"Content-Type": "text/plain"}, json.dumps(webhook_body()).encode(), 415),
    ("form", {"Content-Type": "application/x-www-form-urlencoded"}, b"execution_id=1", 415),
    ("no content type", {"Content-Type": ""}, json.dumps(webhook_body()).encode(), 415),
    (
        "placeholders everywhere",
        {},
        json.dumps({k: "${{secrets.PREFECT_API_KEY}}" for k in webhook_body()}).encode(),
        422,
    ),
]


@pytest.fixture
async def guarded(make_settings: SettingsFactory) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(admin_token=ADMIN_TOKEN, prefect_api_key="pnu_hostile_secret")
    async with open_client(settings) as client:
        yield client


@pytest.mark.parametrize(
    ("case", "headers", "content", "status"), HOSTILE, ids=[h[0] for h in HOSTILE]
)
async def test_a_hostile_body_gets_a_clean_4xx_and_nothing_is_stored(
    guarded: httpx.AsyncClient, case: str, headers: dict[str, str], content: bytes, status: int
) -> None:
    sent = {"Content-Type": "application/json", **auth(), **headers}

    response = await guarded.post("/webhooks/erathos", content=content, headers=sent)
    stored = await guarded.get("/events", headers=auth(ADMIN_TOKEN))

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"]
    assert error["message"]
    assert "pnu_hostile_secret" not in response.text
    assert stored.json()["events"] == []


async def test_a_chunked_body_over_the_cap_is_refused_without_a_content_length(
    guarded: httpx.AsyncClient,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"execution_id": "x", "pad": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    response = await guarded.post(
        "/webhooks/erathos",
        content=chunks(),
        headers={"Content-Type": "application/json", **auth()},
    )

    assert response.status_code == 413


async def test_a_placeholder_in_incoming_data_stays_literal_text(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(
        admin_token=ADMIN_TOKEN,
        prefect_api_key="pnu_hostile_secret",
        prefect_api_url="http://127.0.0.1:9/api",
        sync_wait="50ms",
    )
    sent = webhook_body(
        table_name="${{secrets.PREFECT_API_KEY}}", schema_name="${{variables.HOME}}"
    )
    async with open_client(settings) as client:
        accepted = await client.post("/webhooks/erathos", json=sent, headers=auth())
        report = await client.post("/simulate", json=sent, headers=auth(ADMIN_TOKEN))

    assert accepted.status_code == 202
    request = report.json()["routes"][0]
    assert request["matches"] is True
    name = request["request"]["body"]["name"]
    assert name == "erathos_run_${{secrets.PREFECT_API_KEY}}"
    assert "pnu_hostile_secret" not in report.text


async def test_over_the_rate_limit_a_token_gets_429_with_retry_after_before_the_store(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(rate_limit=1, admin_token=ADMIN_TOKEN, sync_wait="50ms")
    async with open_client(settings) as client:
        answers = [
            await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
            for _ in range(4)
        ]
        stored = await client.get("/events", headers=auth(ADMIN_TOKEN))

    assert [a.status_code for a in answers] == [202, 202, 429, 429]
    assert answers[2].headers["retry-after"] == "1"
    assert answers[2].json()["error"]["code"] == "rate_limited"
    assert len(stored.json()["events"]) == 2


def test_a_slow_client_is_cut_off(tmp_path: Path) -> None:
    env = clean_environment(
        PREFECT_API_URL="http://127.0.0.1:9/api",
        PREFECT_FLOW_ID=str(uuid.uuid4()),
        BRIDGE_WEBHOOK_TOKEN=TOKEN,
        BRIDGE_PORT=str(free_port()),
        BRIDGE_DATABASE_URL=f"sqlite:///{tmp_path / 'bridge.db'}",
        BRIDGE_BODY_TIMEOUT="1s",
        BRIDGE_LOG_FORMAT="json",
    )
    service = ServiceProcess(env, tmp_path, tmp_path / "service.log")
    service.start()
    try:
        with socket.create_connection(("127.0.0.1", int(env["BRIDGE_PORT"])), timeout=10) as sock:
            sock.sendall(
                b"POST /webhooks/erathos HTTP/1.1\r\nHost: bridge\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n"
                + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
                + b'{"execution_id": '
            )
            started = time.monotonic()
            answer = sock.recv(4096)
            waited = time.monotonic() - started
    finally:
        service.stop()

    assert answer.startswith(b"HTTP/1.1 408")
    assert waited < 5


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00", "9999-12-31T23:59:59"])
async def test_an_extreme_time_filter_is_a_422_not_a_500(
    guarded: httpx.AsyncClient, since: str
) -> None:
    response = await guarded.get("/events", params={"since": since}, headers=auth(ADMIN_TOKEN))

    assert response.status_code in (200, 422), response.text


@pytest.mark.parametrize("depth", [500, 900, 950, 990, 1000, 1100])
async def test_nesting_around_the_parsers_limit_is_stored_or_refused_never_a_500(
    guarded: httpx.AsyncClient, depth: int
) -> None:
    content = raw('{"execution_id": "a", "x": ' + '{"a": ' * depth + "1" + "}" * depth + "}")

    response = await guarded.post(
        "/webhooks/erathos", content=content, headers={"Content-Type": "application/json", **auth()}
    )

    assert response.status_code in (202, 400), response.text

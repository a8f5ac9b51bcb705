"""The dispatcher's turns against the real Prefect server: shutdown gives in-flight
deliveries back for the next start, an unexpected exception in a turn is a recorded
attempt like any failure, and what breaks around a turn (a log line, a metric, the store)
never changes what it records. Each test runs on both stores, SQLite and PostgreSQL (see
``every_database``)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

import app.delivery.dispatcher
from app.delivery.client import AttemptResult, PrefectConnection
from app.metrics import Metrics
from app.routing.router import PrefectRequest
from app.storage.store import Store
from tests.support.erathos import webhook_body
from tests.support.faults import FaultProxy
from tests.support.inprocess import TargetSettings, open_client
from tests.support.tokens import ADMIN_TOKEN, auth
from tests.support.waiting import settled
from tools.localprefect import PrefectServer

pytestmark = [pytest.mark.anyio, pytest.mark.every_database]


async def test_shutdown_gives_in_flight_deliveries_back_and_the_next_start_sends_them(
    fast_retries: TargetSettings, prefect: PrefectServer, flow_id: str
) -> None:
    proxy = FaultProxy(f"http://127.0.0.1:{prefect.port}", ["stall"], stall=5)
    await proxy.start()
    settings = fast_retries(
        f"{proxy.url}/api",
        flow_id,
        prefect_timeout="4s",
        lease="30s",
        sync_wait="100ms",
        shutdown_grace="200ms",
    )
    try:
        async with open_client(settings) as client:
            answer = (
                await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
            ).json()
            assert answer["status"] == "queued"
        # The lease (30 s) would still hold it; shutdown released it, so it goes at once.
        async with open_client(settings) as client:
            await settled(client, within=10)
    finally:
        await proxy.stop()

    [run] = prefect.flow_runs(flow_id)
    assert run["idempotency_key"] == answer["execution_id"]


INJECTED = "injected bug 0123456789"


@pytest.fixture
def first_send_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first flow run request raises RuntimeError (a bug, a library's surprise), as
    nothing Prefect or the network does ever makes it; later ones are sent."""
    send = PrefectConnection.create_flow_run
    raised: list[bool] = []

    async def create_flow_run(self: PrefectConnection, request: PrefectRequest) -> AttemptResult:
        if not raised:
            raised.append(True)
            raise RuntimeError(INJECTED)
        return await send(self, request)

    monkeypatch.setattr(PrefectConnection, "create_flow_run", create_flow_run)


@pytest.mark.usefixtures("first_send_raises")
async def test_an_unexpected_error_in_a_turn_is_a_recorded_attempt_retried_with_the_backoff(
    fast_retries: TargetSettings, prefect: PrefectServer, flow_id: str
) -> None:
    # A lease far longer than the test: the retry is the backoff's, not a lease running out.
    settings = fast_retries(prefect.api_url, flow_id, lease="60s")
    async with open_client(settings) as client:
        with capture_logs() as logs:
            answer = (
                await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
            ).json()
        await settled(client, within=10)
        detail = (
            await client.get(f"/events/{answer['event_id']}", headers=auth(ADMIN_TOKEN))
        ).json()

    [first_turn] = answer["deliveries"]
    assert (answer["status"], first_turn["state"]) == ("queued", "pending")
    assert first_turn["error"] == f"unexpected error: RuntimeError: {INJECTED}"
    [delivery] = detail["deliveries"]
    assert delivery["state"] == "delivered"
    failed, sent = delivery["attempts_made"]
    assert (failed["outcome"], failed["status_code"]) == ("transient", None)
    assert failed["error"] == first_turn["error"]
    assert 0 < failed["retry_in_seconds"] <= 1.0  # the backoff of the first failure
    assert (sent["outcome"], sent["status_code"]) == ("delivered", 201)
    [run] = prefect.flow_runs(flow_id)
    assert run["id"] == delivery["flow_run_id"]
    [logged] = [line for line in logs if line["event"] == "delivery turn failed"]
    assert (logged["log_level"], logged["exc_info"]) == ("error", True)  # with its traceback


@pytest.mark.usefixtures("first_send_raises")
async def test_an_unexpected_error_in_the_last_allowed_attempt_dead_letters_the_delivery(
    fast_retries: TargetSettings, prefect: PrefectServer, flow_id: str
) -> None:
    settings = fast_retries(prefect.api_url, flow_id, lease="60s", max_attempts=1)
    async with open_client(settings) as client:
        answer, detail = await send_and_read_back(client)

    [delivery] = detail["deliveries"]
    assert (answer["status"], delivery["state"]) == ("failed", "dead")
    assert delivery["error"] == (
        f"gave up after 1 attempts; last: unexpected error: RuntimeError: {INJECTED}"
    )
    [attempt] = delivery["attempts_made"]
    assert attempt["outcome"] == "transient"
    assert prefect.flow_runs(flow_id) == []


def broken(*_: Any, **__: Any) -> None:
    raise ValueError("I/O operation on closed file")


async def test_a_failing_log_line_or_metric_never_changes_what_an_attempt_records(
    fast_retries: TargetSettings,
    prefect: PrefectServer,
    flow_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app.delivery.dispatcher, "log_attempt", broken)
    monkeypatch.setattr(Metrics, "attempted", broken)
    monkeypatch.setattr(Metrics, "finished", broken)
    settings = fast_retries(prefect.api_url, flow_id)
    async with open_client(settings) as client:
        answer, detail = await send_and_read_back(client)

    assert answer["status"] == "delivered"
    [delivery] = detail["deliveries"]
    [attempt] = delivery["attempts_made"]
    assert (attempt["outcome"], attempt["status_code"]) == ("delivered", 201)
    [run] = prefect.flow_runs(flow_id)
    assert run["id"] == delivery["flow_run_id"]


async def test_a_turn_that_cannot_even_be_recorded_is_logged_with_its_traceback(
    fast_retries: TargetSettings,
    prefect: PrefectServer,
    flow_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refused(*_: Any, **__: Any) -> bool:
        raise RuntimeError(INJECTED)

    monkeypatch.setattr(Store, "complete_attempt", refused)
    settings = fast_retries(prefect.api_url, flow_id, lease="60s")
    async with open_client(settings) as client:
        with capture_logs() as logs:
            answer = (
                await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
            ).json()

    assert answer["status"] == "queued"  # its lease runs out, and it is sent again
    [logged] = [line for line in logs if line["event"] == "delivery turn not recorded"]
    assert logged["delivery_id"] == answer["deliveries"][0]["id"]
    assert isinstance(logged["exc_info"], RuntimeError)


async def send_and_read_back(client: httpx.AsyncClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """One event through the webhook: its answer, and then the admin API's view of it."""
    answer = (await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())).json()
    detail = await client.get(f"/events/{answer['event_id']}", headers=auth(ADMIN_TOKEN))
    return answer, detail.json()

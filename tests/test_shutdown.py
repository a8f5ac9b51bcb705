"""SIGTERM to a real service process while deliveries are in flight (Prefect stalls behind a
fault-injecting front) and a webhook is still waiting for its answer: the process
answers the webhook, gives the deliveries back and exits 0 within its grace; after a
restart every acknowledged event is exactly one flow run."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from app.service import shutdown_budget
from app.settings import Settings
from tests.conftest import ADMIN_TOKEN, TOKEN
from tests.erathos import execution
from tests.faults import FaultProxy
from tests.processes import ServiceProcess, clean_environment, pending
from tools.localprefect import PrefectServer, free_port

pytestmark = pytest.mark.anyio

GRACE = 3.0
EXIT_MARGIN = 1.5  # interpreter start-up aside, closing the store and the clients


def post_event(url: str) -> tuple[str, httpx.Response]:
    body = {k.lower(): v for k, v in execution().items()}
    answer = httpx.post(
        f"{url}/webhooks/erathos",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    return body["execution_id"], answer


def deliveries(database: Path) -> list[tuple[str, str | None]]:
    """(state, lease owner) of every delivery, read from the store itself."""
    with sqlite3.connect(database) as db:
        return db.execute("SELECT state, lease_owner FROM deliveries").fetchall()


async def test_sigterm_with_deliveries_in_flight_exits_0_in_its_grace_and_loses_nothing(
    tmp_path: Path, prefect: PrefectServer, flow_id: str
) -> None:
    # The first creation reaches Prefect (the run exists) but its answer never comes back.
    proxy = FaultProxy(f"http://127.0.0.1:{prefect.port}", ["stall-after"], stall=60)
    await proxy.start()
    env = clean_environment(
        PREFECT_API_URL=f"{proxy.url}/api",
        PREFECT_FLOW_ID=flow_id,
        BRIDGE_WEBHOOK_TOKEN=TOKEN,
        BRIDGE_ADMIN_TOKEN=ADMIN_TOKEN,
        BRIDGE_PORT=str(free_port()),
        BRIDGE_DATABASE_URL=f"sqlite:///{tmp_path / 'bridge.db'}",
        BRIDGE_PREFECT_TIMEOUT="30s",
        BRIDGE_LEASE="60s",  # a lease still held at restart would hold the delivery back
        BRIDGE_SYNC_WAIT="1s",
        BRIDGE_SHUTDOWN_GRACE=f"{GRACE}s",
        BRIDGE_LOG_FORMAT="json",
    )
    service = ServiceProcess(env, tmp_path, tmp_path / "service.log")
    try:
        await asyncio.to_thread(service.start)
        # One delivery stalls in Prefect; the others wait for their turn behind it.
        queued = await asyncio.gather(
            *(asyncio.to_thread(post_event, service.url) for _ in range(3))
        )
        # A webhook still waiting for Prefect when SIGTERM comes.
        in_flight = asyncio.create_task(asyncio.to_thread(post_event, service.url))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        service.signal(signal.SIGTERM)
        code = await asyncio.to_thread(service.wait, GRACE + EXIT_MARGIN + 5)
        took = time.monotonic() - started
        answered = [*queued, await in_flight]
        left = deliveries(tmp_path / "bridge.db")

        await asyncio.to_thread(service.start)  # the proxy passes everything now
        deadline = time.monotonic() + 60
        while await asyncio.to_thread(pending, service, ADMIN_TOKEN):
            assert time.monotonic() < deadline, "deliveries still pending after the restart"
            await asyncio.sleep(0.2)
    finally:
        service.stop()
        await proxy.stop()

    assert code == 0
    assert took < GRACE + EXIT_MARGIN, f"took {took:.1f} s"
    assert [a.status_code for _, a in answered] == [202] * 4
    assert {a.json()["status"] for _, a in answered} == {"queued"}
    # Nothing finished, nothing lost: all four pending, none held by the stopped process.
    assert left == [("pending", None)] * 4
    assert proxy.applied[0] == "stall-after"
    runs = Counter(run["idempotency_key"] for run in prefect.flow_runs(flow_id))
    assert runs == Counter(execution_id for execution_id, _ in answered)
    log = service.log_path.read_text()
    assert "shutdown: deliveries in flight given back" in log


def test_the_default_shutdown_budget_fits_dockers_10_second_stop_timeout() -> None:
    settings = Settings(
        _env_file=None,
        _secrets_dir=None,
        webhook_tokens=TOKEN,
        prefect_api_url="http://127.0.0.1:9/api",
        prefect_flow_id="5d3c35a6-9b1e-4a0e-9a57-2f7f2bd1c0de",
    )
    requests, deliveries_grace = shutdown_budget(settings)
    assert requests >= settings.sync_wait.total_seconds()  # a waiting webhook is answered
    assert requests + deliveries_grace == settings.shutdown_grace.total_seconds() <= 8

"""SIGTERM to a real service process while deliveries are in flight (Prefect stalls behind a
fault-injecting front) and a webhook is still waiting for its answer: the process
answers the webhook, cancels the deliveries at the end of its grace and gives them back
(no attempt recorded: it never waited for Prefect's timeout) and exits 0; after a restart
every acknowledged event is exactly one flow run."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from collections import Counter
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.service import shutdown_budget
from tests.support.erathos import webhook_body
from tests.support.faults import FaultProxy
from tests.support.processes import ServiceProcess, clean_environment
from tests.support.tokens import ADMIN_TOKEN, TOKEN
from tests.support.waiting import eventually
from tools.localprefect import PrefectServer, free_port

pytestmark = pytest.mark.anyio

# The webhook that SIGTERM finds waiting must still be waiting when the test sends it,
# after two more requests: SYNC_WAIT is a failure bound for those (a busy machine took
# over a second). GRACE leaves it room: the requests' share, SYNC_WAIT + 1 s, is at most
# half of it (app.service.shutdown_budget).
SYNC_WAIT = 8.0
GRACE = 2 * (SYNC_WAIT + 1)
# Only keeps a broken test from hanging: a process that waited for Prefect (stalled for
# 60 s behind a 30 s timeout) would still exit in it, and its recorded attempts tell.
EXIT_GUARD = 120.0


async def post_event(url: str, body: dict[str, str]) -> tuple[str, httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(
            f"{url}/webhooks/erathos", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
        )
    return body["execution_id"], answer


def accepted(service: ServiceProcess, execution_id: str) -> bool:
    """Whether the service has logged the event as stored (it then waits for Prefect,
    up to BRIDGE_SYNC_WAIT, before it answers)."""
    return any(
        '"event accepted"' in line and execution_id in line
        for line in service.log_path.read_text().splitlines()
    )


def deliveries(database: Path) -> list[tuple[str, str | None]]:
    """(state, lease owner) of every delivery, read from the store itself."""
    with sqlite3.connect(database) as db:
        return db.execute("SELECT state, lease_owner FROM deliveries").fetchall()


def attempts(database: Path) -> int:
    """How many attempts the store recorded (a cancelled turn records none)."""
    with sqlite3.connect(database) as db:
        [(count,)] = db.execute("SELECT count(*) FROM attempts").fetchall()
        return int(count)


def given_back(service: ServiceProcess) -> list[int]:
    """How many deliveries each shutdown gave back, from the service's own log."""
    lines = [json.loads(line) for line in service.log_path.read_text().splitlines()]
    return [
        line["deliveries"]
        for line in lines
        if line.get("msg") == "shutdown: deliveries in flight given back"
    ]


@pytest.mark.slow
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
        BRIDGE_SYNC_WAIT=f"{SYNC_WAIT}s",
        BRIDGE_SHUTDOWN_GRACE=f"{GRACE}s",
        BRIDGE_LOG_FORMAT="json",
    )
    service = ServiceProcess(env, tmp_path, tmp_path / "service.log")
    try:
        await service.launch()
        # One delivery stalls in Prefect: its flow run is made, the answer never comes.
        stalled = asyncio.create_task(post_event(service.url, webhook_body()))
        await eventually(
            lambda: proxy.creations.total() == 1, within=30, what="the first creation in Prefect"
        )
        # A webhook still waiting for Prefect when SIGTERM comes: its delivery, claimed as
        # it was stored, waits for its turn behind the stalled one (BRIDGE_SYNC_WAIT).
        last = webhook_body()
        in_flight = asyncio.create_task(post_event(service.url, last))
        await eventually(
            lambda: accepted(service, last["execution_id"]),
            within=30,
            what="the waiting webhook stored",
            every=0.02,
        )
        # Two more queue behind them (answered at once: nothing more can be claimed).
        queued = await asyncio.gather(*(post_event(service.url, webhook_body()) for _ in range(2)))
        assert not in_flight.done(), "answered before SIGTERM: it was not waiting any more"
        service.signal(signal.SIGTERM)
        code = await asyncio.to_thread(service.wait, EXIT_GUARD)
        answered = [await stalled, await in_flight, *queued]
        left = deliveries(tmp_path / "bridge.db")
        tried = attempts(tmp_path / "bridge.db")
        first_life = given_back(service)

        await service.launch()  # the proxy passes everything now
        await service.settled(within=60)
    finally:
        service.stop()
        await proxy.stop()

    assert code == 0
    # The stalled delivery and the three claimed behind it were cancelled at the grace's end
    # and given back, not waited for: no attempt of theirs was recorded.
    assert first_life == [4]
    assert tried == 0
    assert [a.status_code for _, a in answered] == [202] * 4
    assert {a.json()["status"] for _, a in answered} == {"queued"}
    # Nothing finished, nothing lost: all four pending, none held by the stopped process.
    assert left == [("pending", None)] * 4
    assert proxy.applied[0] == "stall-after"
    runs = Counter(run["idempotency_key"] for run in prefect.flow_runs(flow_id))
    assert runs == Counter(execution_id for execution_id, _ in answered)


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

"""PostgreSQL restarted in the middle of a burst, with real processes: while it is down
the webhook answers 503 and readiness fails; nothing acknowledged is lost; the same
service process recovers by itself when the server is back (a private server, started
for this test only: the machine's shared one is never restarted)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.databases import run_admin
from tests.support.erathos import webhook_body
from tests.support.pgcluster import PostgresCluster, server_binaries
from tests.support.processes import (
    ServiceProcess,
    acknowledged,
    burst,
    fast_service_environment,
    readiness,
)
from tests.support.tokens import TOKEN
from tests.support.waiting import eventually
from tools.localprefect import PrefectServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    bindir = server_binaries()
    if bindir is None:
        message = "PostgreSQL's server binaries (initdb, pg_ctl) are not installed"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    created = PostgresCluster.create(bindir)
    try:
        created.start()
        yield created
    finally:
        created.destroy()


def statuses(answers: Path) -> list[int]:
    """The status of every answer the burst client has written down so far (whole lines
    only: it may be writing the last one)."""
    lines = answers.read_text().split("\n")[:-1] if answers.exists() else []
    return [int(line.split()[1]) for line in lines]


async def readyz_answers(service: ServiceProcess, status: int) -> bool:
    return await readiness(service) == status


async def test_a_postgresql_restart_mid_burst_loses_nothing_acknowledged_and_heals_by_itself(
    cluster: PostgresCluster, tmp_path: Path, prefect: PrefectServer, flow_id: str
) -> None:
    await run_admin(cluster.url(), "CREATE DATABASE bridge")
    env = fast_service_environment(
        prefect.api_url, flow_id, cluster.url("bridge"), BRIDGE_DB_POOL_TIMEOUT="2s"
    )
    service = ServiceProcess(env, tmp_path, tmp_path / "service.log")
    await service.launch()
    pid = service.process.pid if service.process else None
    # Ten seconds of traffic, the outage in the middle.
    client, acked, answers = burst([service], TOKEN, tmp_path, 500, rate="50", concurrency="16")
    try:
        await eventually(
            lambda: len(acknowledged(acked)) >= 80, within=60, what="80 acknowledgements"
        )
        # As if the server crashed; the start recovers from its WAL.
        await asyncio.to_thread(cluster.stop, "immediate")
        down_at = len(acknowledged(acked))
        await eventually(
            lambda: readyz_answers(service, 503), within=10, what="/readyz 503 while down"
        )
        # The burst goes on against the stopped server (about a second of it) and is
        # answered 503.
        refused_before = statuses(answers).count(503)
        await eventually(
            lambda: statuses(answers).count(503) >= refused_before + 50,
            within=30,
            what="50 more webhooks answered 503 while the server is down",
        )
        await asyncio.to_thread(cluster.start)
        await eventually(
            lambda: readyz_answers(service, 200), within=30, what="/readyz 200 when back"
        )
        assert await asyncio.to_thread(client.wait, 120) == 0
        # Accepted again by the same process, whatever the burst's timing was.
        after = webhook_body(table_name="after_the_restart")
        async with httpx.AsyncClient(timeout=10) as http:
            accepted = await http.post(
                f"{service.url}/webhooks/erathos",
                json=after,
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
        assert accepted.status_code == 202, accepted.text
        await service.settled(within=120)
        assert service.process is not None
        assert service.process.poll() is None  # never restarted, never crashed
        assert service.process.pid == pid
    finally:
        client.kill()
        service.stop()

    answered = statuses(answers)
    ids = [*acknowledged(acked), after["execution_id"]]
    assert set(answered) <= {202, 503}, Counter(answered)  # 503, never a 500 or a hang
    assert answered.count(503) > 0  # the outage was seen, and nothing acknowledged in it
    assert down_at < len(ids) == answered.count(202) + 1
    runs = Counter(run["idempotency_key"] for run in prefect.flow_runs(flow_id))
    assert all(runs[execution_id] == 1 for execution_id in ids)
    assert set(runs.values()) == {1}

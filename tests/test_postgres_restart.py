"""PostgreSQL restarted in the middle of a burst, with real processes: while it is down
the webhook answers 503 and readiness fails; nothing acknowledged is lost; the same
service process recovers by itself when the server is back (a private server, started
for this test only: the machine's shared one is never restarted)."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, TOKEN
from tests.databases import run_admin
from tests.erathos import execution
from tests.pgcluster import PostgresCluster, server_binaries
from tests.processes import (
    ServiceProcess,
    acknowledged,
    burst,
    fast_service_environment,
    pending,
    wait_for,
)
from tools.localprefect import PrefectServer


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


def event_body() -> dict[str, str]:
    return {k.lower(): v for k, v in execution(table_name="after_the_restart").items()}


def readiness(service: ServiceProcess) -> int:
    try:
        return httpx.get(f"{service.url}/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_a_postgresql_restart_mid_burst_loses_nothing_acknowledged_and_heals_by_itself(
    cluster: PostgresCluster, tmp_path: Path, prefect: PrefectServer, flow_id: str
) -> None:
    asyncio.run(run_admin(cluster.url(), "CREATE DATABASE bridge"))
    env = fast_service_environment(
        prefect.api_url, flow_id, cluster.url("bridge"), BRIDGE_DB_POOL_TIMEOUT="2s"
    )
    service = ServiceProcess(env, tmp_path, tmp_path / "service.log")
    service.start()
    pid = service.process.pid if service.process else None
    # Ten seconds of traffic, the outage in the middle.
    client, acked, answers = burst([service], TOKEN, tmp_path, 500, rate="50", concurrency="16")
    try:
        wait_for(lambda: len(acknowledged(acked)) >= 80, within=60, what="80 acknowledgements")
        cluster.stop("immediate")  # as if the server crashed; the start recovers from its WAL
        down_at = len(acknowledged(acked))
        wait_for(lambda: readiness(service) == 503, within=10, what="/readyz 503 while down")
        time.sleep(2)  # the burst goes on against the stopped server
        cluster.start()
        wait_for(lambda: readiness(service) == 200, within=30, what="/readyz 200 when back")
        assert client.wait(120) == 0
        # Accepted again by the same process, whatever the burst's timing was.
        after = event_body()
        accepted = httpx.post(
            f"{service.url}/webhooks/erathos",
            json=after,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
        assert accepted.status_code == 202, accepted.text
        wait_for(lambda: pending(service, ADMIN_TOKEN) == 0, within=120, what="every delivery")
        assert service.process is not None
        assert service.process.poll() is None  # never restarted, never crashed
        assert service.process.pid == pid
    finally:
        client.kill()
        service.stop()

    statuses = [int(line.split()[1]) for line in answers.read_text().splitlines()]
    ids = [*acknowledged(acked), after["execution_id"]]
    assert set(statuses) <= {202, 503}, Counter(statuses)  # 503, never a 500 or a hang
    assert statuses.count(503) > 0  # the outage was seen, and nothing acknowledged in it
    assert down_at < len(ids) == statuses.count(202) + 1
    runs = Counter(run["idempotency_key"] for run in prefect.flow_runs(flow_id))
    assert all(runs[execution_id] == 1 for execution_id in ids)
    assert set(runs.values()) == {1}

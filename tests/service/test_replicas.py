"""High availability on PostgreSQL, with real processes: two replicas of the service on
one database and the session's real Prefect server. Any replica accepts and delivers
any event; duplicates of one execution sent to both replicas at the same moment make
one event; when one replica dies (``kill -9``), the other delivers everything it had
acknowledged once the leases run out."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.storage.records import DeliveryState
from app.storage.schema import deliveries, events
from tests.support.databases import query
from tests.support.processes import (
    ServiceProcess,
    acknowledged,
    burst,
    fast_service_environment,
)
from tests.support.tokens import TOKEN
from tests.support.waiting import eventually
from tools.localprefect import PrefectServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def replica(
    name: str, tmp_path: Path, prefect: PrefectServer, flow_id: str, url: str
) -> ServiceProcess:
    env = fast_service_environment(prefect.api_url, flow_id, url)
    return ServiceProcess(env, tmp_path, tmp_path / f"{name}.log")


@pytest.fixture
def replicas(
    tmp_path: Path, prefect: PrefectServer, flow_id: str, postgres_url: str
) -> Iterator[list[ServiceProcess]]:
    """Two replicas on one fresh PostgreSQL database, started at the same moment (so
    both try to create the schema at once)."""
    started = [replica(n, tmp_path, prefect, flow_id, postgres_url) for n in ("a", "b")]
    try:
        for service in started:
            service.spawn()
        for service in started:
            service.wait_ready()
        yield started
    finally:
        for service in started:
            service.stop()


async def stored_counts(url: str) -> tuple[int, int]:
    """(events, deliveries) in the shared database."""
    n_events, n_deliveries = await query(
        url,
        select(func.count()).select_from(events),
        select(func.count()).select_from(deliveries),
    )
    return n_events, n_deliveries


async def retried(url: str) -> int:
    """Delivered deliveries that were claimed more than once."""
    [count] = await query(
        url,
        select(func.count())
        .select_from(deliveries)
        .where(deliveries.c.attempts > 1, deliveries.c.state == DeliveryState.DELIVERED),
    )
    return count


def answers_by_id(path: Path) -> dict[str, list[tuple[int, int]]]:
    """execution id -> [(status, replica index)] in answer order."""
    found: dict[str, list[tuple[int, int]]] = {}
    for line in path.read_text().splitlines():
        execution_id, status, index = line.split()
        found.setdefault(execution_id, []).append((int(status), int(index)))
    return found


def delivered_by(service: ServiceProcess) -> int:
    """How many deliveries this replica sent (its log has one line per attempt)."""
    return sum(
        '"delivery attempt"' in line and '"delivered"' in line
        for line in service.log_path.read_text().splitlines()
    )


async def test_two_replicas_turn_1000_events_with_concurrent_duplicates_into_1000_flow_runs(
    replicas: list[ServiceProcess],
    tmp_path: Path,
    prefect: PrefectServer,
    flow_id: str,
    postgres_url: str,
) -> None:
    client, acked, answers = burst(
        replicas, TOKEN, tmp_path, 1000, duplicates="0.1", concurrency="16"
    )
    try:
        assert await asyncio.to_thread(client.wait, 180) == 0
        await replicas[0].settled(within=120)
    finally:
        client.kill()

    sent = answers_by_id(answers)
    assert len(sent) == 1000
    twice = {i: a for i, a in sent.items() if len(a) == 2}
    assert len(twice) == 100
    # Both replicas answered each duplicate, one as the new event, one as a duplicate.
    for execution_id, got in twice.items():
        assert sorted(status for status, _ in got) == [200, 202], execution_id
        assert {index for _, index in got} == {0, 1}
    assert {s for a in sent.values() for s, _ in a} <= {200, 202}
    assert sorted(acknowledged(acked)) == sorted(sent)
    assert await stored_counts(postgres_url) == (1000, 1000)
    runs = Counter(run["idempotency_key"] for run in prefect.flow_runs(flow_id))
    assert len(runs) == 1000
    assert set(runs) == set(sent)
    assert set(runs.values()) == {1}
    # Any replica delivers: both sent flow runs.
    assert all(delivered_by(service) > 0 for service in replicas)


async def test_a_replica_killed_mid_burst_leaves_its_deliveries_to_the_survivor(
    replicas: list[ServiceProcess],
    tmp_path: Path,
    prefect: PrefectServer,
    flow_id: str,
    postgres_url: str,
) -> None:
    doomed, survivor = replicas
    client, acked, answers = burst(
        replicas, TOKEN, tmp_path, 600, duplicates="0.1", concurrency="16", rate="150"
    )
    try:
        await eventually(
            lambda: len(acknowledged(acked)) >= 150, within=120, what="150 acknowledgements"
        )
        doomed.signal(signal.SIGKILL)
        await asyncio.to_thread(doomed.wait)
        assert await asyncio.to_thread(client.wait, 180) == 0
        await survivor.settled(within=120)
    finally:
        client.kill()

    sent = answers_by_id(answers)
    ids = acknowledged(acked)
    refused = {i for i, got in sent.items() if all(status == 0 for status, _ in got)}
    assert 150 <= len(ids) < 600  # the kill really cut the burst
    assert refused  # events sent only to the dead replica were not acknowledged
    runs = Counter(run["idempotency_key"] for run in prefect.flow_runs(flow_id))
    assert all(runs[execution_id] == 1 for execution_id in ids)
    assert set(runs.values()) == {1}
    # The deliveries the dead replica held (leased, some already sent) were claimed
    # again by the survivor once their leases ran out, and delivered: one run each.
    assert await retried(postgres_url) > 0

"""Crash safety with real processes: ``kill -9`` of the service during a burst sent by a
separate client process loses no acknowledged event and doubles none."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import pytest

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


async def test_kill_9_during_a_burst_loses_and_doubles_nothing_acknowledged(
    tmp_path: Path, prefect: PrefectServer, flow_id: str
) -> None:
    env = fast_service_environment(prefect.api_url, flow_id, f"sqlite:///{tmp_path / 'bridge.db'}")
    service = ServiceProcess(env, tmp_path, tmp_path / "service.log")
    await service.launch()
    client, acked, _ = burst([service], TOKEN, tmp_path, 500, concurrency="16", rate="100")
    try:
        await eventually(
            lambda: len(acknowledged(acked)) >= 150, within=120, what="150 acknowledgements"
        )
        service.signal(signal.SIGKILL)
        await asyncio.to_thread(service.wait)
        assert await asyncio.to_thread(client.wait, 120) == 0
        before_restart = acknowledged(acked)

        await service.launch()
        await service.settled(within=120)
    finally:
        client.kill()
        service.stop()

    assert 150 <= len(before_restart) < 500  # the kill really cut the burst
    runs = Counter(run["idempotency_key"] for run in prefect.flow_runs(flow_id))
    assert all(runs[execution_id] == 1 for execution_id in before_restart)
    assert set(runs.values()) == {1}

"""Recovery at Prefect's own pace (real Prefect server on SQLite): after an outage the
backlog starts within seconds and drains without a 503 storm; a flapping server loses
and doubles nothing, and the outage alone dead-letters nothing."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, SettingsFactory, auth, open_client
from tests.erathos import execution
from tests.faults import FaultProxy
from tools.localprefect import PrefectServer

pytestmark = pytest.mark.anyio


def bodies(count: int) -> list[dict[str, str]]:
    return [{k.lower(): v for k, v in execution(table_name=f"t{i}").items()} for i in range(count)]


async def count_state(client: httpx.AsyncClient, state: str) -> int:
    response = await client.get(
        "/events", params={"state": state, "limit": 500}, headers=auth(ADMIN_TOKEN)
    )
    return len(response.json()["events"])


async def wait_drained(client: httpx.AsyncClient, within: float) -> None:
    deadline = time.monotonic() + within
    while await count_state(client, "pending"):
        assert time.monotonic() < deadline, "the backlog did not drain"
        await asyncio.sleep(0.2)


async def test_a_backlog_starts_within_seconds_and_drains_without_a_503_storm(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    prefect = PrefectServer.launch(home=tmp_path / "prefect")
    flow_id = prefect.create_flow("dbt-backlog")
    prefect.stop()
    proxy = FaultProxy(f"http://127.0.0.1:{prefect.port}")
    await proxy.start()
    # Shipped retry settings: only the store, the admin token and a short sync wait differ.
    settings = make_settings(
        prefect_api_url=f"{proxy.url}/api",
        prefect_flow_id=flow_id,
        admin_token=ADMIN_TOKEN,
        sync_wait="100ms",
        poll_interval="1s",
    )
    sent = bodies(300)
    try:
        async with open_client(settings) as client:
            for chunk in range(0, 300, 50):
                answers = await asyncio.gather(
                    *(
                        client.post("/webhooks/erathos", json=b, headers=auth())
                        for b in sent[chunk : chunk + 50]
                    )
                )
                assert {a.status_code for a in answers} == {202}
            assert await count_state(client, "pending") == 300

            prefect.start()  # returns once /health answers
            back = time.monotonic()
            while not proxy.creations[201]:
                assert time.monotonic() - back < 10, "no flow run within 10 s of Prefect's return"
                await asyncio.sleep(0.05)
            first_run_after = time.monotonic() - back
            await wait_drained(client, within=120)
            drained_after = time.monotonic() - back
            dead = await count_state(client, "dead")
        runs = prefect.flow_runs(flow_id)
    finally:
        await proxy.stop()
        prefect.stop()

    keys = Counter(run["idempotency_key"] for run in runs)
    assert sorted(keys) == sorted(b["execution_id"] for b in sent)
    assert set(keys.values()) == {1}
    assert dead == 0
    answered = sum(proxy.creations.values())
    storm = proxy.creations[503] / answered
    print(  # the figures the issue asks to report (pytest -s shows them)
        f"\nfirst run {first_run_after:.1f} s after Prefect was back; 300 drained in "
        f"{drained_after:.1f} s; creations answered {dict(proxy.creations)} ({storm:.1%} 503)"
    )
    assert storm < 0.10, f"a 503 storm: {dict(proxy.creations)}"


async def test_a_flapping_prefect_loses_doubles_and_dead_letters_nothing(
    make_settings: SettingsFactory, prefect: PrefectServer, flow_id: str
) -> None:
    proxy = FaultProxy(f"http://127.0.0.1:{prefect.port}")
    await proxy.start()
    settings = make_settings(
        prefect_api_url=f"{proxy.url}/api",
        prefect_flow_id=flow_id,
        admin_token=ADMIN_TOKEN,
        sync_wait="100ms",
        poll_interval="200ms",
        # Few attempts: an outage that burned attempts would dead-letter deliveries.
        max_attempts=4,
    )
    sent = bodies(200)
    try:
        async with open_client(settings) as client:
            proxy.down = True
            for chunk in range(0, 200, 50):
                await asyncio.gather(
                    *(
                        client.post("/webhooks/erathos", json=b, headers=auth())
                        for b in sent[chunk : chunk + 50]
                    )
                )
            for _ in range(4):  # up, then down again in the middle of the drain
                proxy.down = False
                await asyncio.sleep(1.0)
                proxy.down = True
                await asyncio.sleep(1.0)
            proxy.down = False
            await wait_drained(client, within=120)
            dead = await count_state(client, "dead")
    finally:
        await proxy.stop()

    keys = Counter(run["idempotency_key"] for run in prefect.flow_runs(flow_id))
    assert sorted(keys) == sorted(b["execution_id"] for b in sent)
    assert set(keys.values()) == {1}
    assert dead == 0

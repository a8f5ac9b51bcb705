"""Recovery at Prefect's own pace (real Prefect server on SQLite): after an outage the
backlog starts once Prefect is back and drains without a 503 storm; a flapping server
loses and doubles nothing, and the outage alone dead-letters nothing. How fast it starts
and drains is the benchmark's (bench/README.md, phase 8), not a test's."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.erathos import webhook_body
from tests.support.faults import FaultProxy
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.tokens import ADMIN_TOKEN, auth
from tests.support.waiting import eventually
from tools.localprefect import PrefectServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def count_state(client: httpx.AsyncClient, state: str) -> int:
    response = await client.get(
        "/events", params={"state": state, "limit": 500}, headers=auth(ADMIN_TOKEN)
    )
    return len(response.json()["events"])


async def drained(client: httpx.AsyncClient) -> bool:
    return await count_state(client, "pending") == 0


async def test_a_backlog_starts_once_prefect_is_back_and_drains_without_a_503_storm(
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
    sent = [webhook_body(table_name=f"t{i}") for i in range(300)]
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

            before_return = Counter(proxy.creations)
            prefect.start()  # returns once /health answers
            # The deadlines only keep a broken test from hanging.
            await eventually(
                lambda: proxy.creations[201] > 0,
                within=60,
                what="a flow run after Prefect's return",
                every=0.05,
            )
            await eventually(lambda: drained(client), within=300, what="the backlog drained")
            dead = await count_state(client, "dead")
        runs = prefect.flow_runs(flow_id)
    finally:
        await proxy.stop()
        prefect.stop()

    keys = Counter(run["idempotency_key"] for run in runs)
    assert sorted(keys) == sorted(b["execution_id"] for b in sent)
    assert set(keys.values()) == {1}
    assert dead == 0
    # What Prefect answered the creations: nothing while it was down, then one 201 for each
    # of the 300 events (a 200 is a run already created, for a request whose answer came
    # too late), and fewer 503s than one in ten creations.
    assert before_return == Counter()
    assert set(proxy.creations) <= {200, 201, 503}, dict(proxy.creations)
    assert proxy.creations[201] == 300
    answered = sum(proxy.creations.values())
    assert proxy.creations[503] / answered < 0.10, f"a 503 storm: {dict(proxy.creations)}"


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
    sent = [webhook_body(table_name=f"t{i}") for i in range(200)]
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
            # The flapping itself, four times: Prefect up for a second, then down again
            # for a second in the middle of the drain. These sleeps are the scenario (how
            # long each state lasts), not a wait for an outcome.
            for _ in range(4):
                proxy.down = False
                await asyncio.sleep(1.0)
                proxy.down = True
                await asyncio.sleep(1.0)
            proxy.down = False
            await eventually(lambda: drained(client), within=120, what="the backlog drained")
            dead = await count_state(client, "dead")
    finally:
        await proxy.stop()

    keys = Counter(run["idempotency_key"] for run in prefect.flow_runs(flow_id))
    assert sorted(keys) == sorted(b["execution_id"] for b in sent)
    assert set(keys.values()) == {1}
    assert dead == 0

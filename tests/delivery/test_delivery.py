"""At-least-once delivery against the real Prefect server behind a misbehaving front:
every event ends as exactly one flow run, and the backoff shows in the attempts; dead
letters and replays. The dispatcher's own turns are tests/delivery/test_dispatcher.py.
Each test runs on both stores, SQLite and PostgreSQL (see ``every_database``)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from tests.support.erathos import webhook_body
from tests.support.faults import FaultProxy
from tests.support.inprocess import TargetSettings, open_client
from tests.support.tokens import ADMIN_TOKEN, auth
from tests.support.waiting import pending_count, settled
from tools.localprefect import PrefectServer

pytestmark = [pytest.mark.anyio, pytest.mark.every_database]


@pytest.mark.slow
async def test_every_fault_ends_in_exactly_one_flow_run_with_the_backoff_recorded(
    fast_retries: TargetSettings, prefect: PrefectServer, flow_id: str
) -> None:
    script = ["503", "429-seconds", "reset", "500", "stall", "429-date", "stall-after", "503"]
    proxy = FaultProxy(f"http://127.0.0.1:{prefect.port}", script, stall=1.5)
    await proxy.start()
    # A timeout shorter than the stall, so that the stalls are timeouts.
    settings = fast_retries(
        f"{proxy.url}/api", flow_id, max_concurrency=1, prefect_timeout="1s", lease="3s"
    )
    bodies = [webhook_body(table_name=f"t{i}") for i in range(6)]
    try:
        async with open_client(settings) as client:
            answers = [
                await client.post("/webhooks/erathos", json=b, headers=auth()) for b in bodies
            ]
            assert {a.status_code for a in answers} == {202}
            await settled(client, within=60)
            details = [
                (
                    await client.get(f"/events/{a.json()['event_id']}", headers=auth(ADMIN_TOKEN))
                ).json()
                for a in answers
            ]
    finally:
        await proxy.stop()

    assert proxy.applied[: len(script)] == script
    runs = prefect.flow_runs(flow_id)
    keys = Counter(run["idempotency_key"] for run in runs)
    assert sorted(keys) == sorted(b["execution_id"] for b in bodies)
    assert set(keys.values()) == {1}
    attempts = [a for d in details for a in d["deliveries"][0]["attempts_made"]]
    statuses = Counter(a["status_code"] for a in attempts)
    assert statuses[503] == 2
    assert statuses[429] == 2
    assert statuses[500] == 1
    errors = " ".join(a["error"] or "" for a in attempts)
    assert "timed out" in errors
    assert "Error" in errors
    by_retry_after = [a["retry_in_seconds"] for a in attempts if a["status_code"] == 429]
    assert all(0.5 <= r <= 2.5 for r in by_retry_after), by_retry_after
    first_event = details[0]["deliveries"][0]
    assert first_event["state"] == "delivered"
    assert len(first_event["attempts_made"]) > 1


@pytest.mark.slow
async def test_prefect_down_while_100_events_arrive_then_exactly_100_flow_runs(
    fast_retries: TargetSettings, tmp_path: Any
) -> None:
    prefect = PrefectServer.launch(home=tmp_path / "prefect")
    flow_id = prefect.create_flow("dbt-outage")
    prefect.stop()  # nothing listens on its port now
    settings = fast_retries(prefect.api_url, flow_id, sync_wait="200ms")
    bodies = [webhook_body(table_name=f"table_{i}") for i in range(100)]
    try:
        async with open_client(settings) as client:
            answers = await asyncio.gather(
                *(client.post("/webhooks/erathos", json=b, headers=auth()) for b in bodies)
            )
            assert [a.status_code for a in answers] == [202] * 100
            assert {a.json()["status"] for a in answers} == {"queued"}
            assert await pending_count(client) == 100

            prefect.start()
            await settled(client, within=60)
        runs = prefect.flow_runs(flow_id)
    finally:
        prefect.stop()

    keys = Counter(run["idempotency_key"] for run in runs)
    assert len(runs) == 100
    assert set(keys) == {b["execution_id"] for b in bodies}


async def test_an_unknown_flow_is_dead_lettered_with_prefects_reason_and_replays_once_fixed(
    fast_retries: TargetSettings, prefect: PrefectServer, flow_id: str
) -> None:
    wrong = fast_retries(prefect.api_url, "5d3c35a6-9b1e-4a0e-9a57-2f7f2bd1c0de")
    body = webhook_body()
    async with open_client(wrong) as client:
        answer = (await client.post("/webhooks/erathos", json=body, headers=auth())).json()
        [dead] = answer["deliveries"]
    assert answer["status"] == "failed"
    assert dead["state"] == "dead"
    assert dead["attempts"] == 1
    assert "HTTP 409" in dead["error"]
    assert "Data integrity conflict" in dead["error"]

    fixed = fast_retries(prefect.api_url, flow_id)
    async with open_client(fixed) as client:
        dead_list = await client.get("/events", params={"state": "dead"}, headers=auth(ADMIN_TOKEN))
        assert [e["id"] for e in dead_list.json()["events"]] == [answer["event_id"]]
        replay = await client.post(f"/deliveries/{dead['id']}/replay", headers=auth(ADMIN_TOKEN))
        assert replay.status_code == 202
        await settled(client, within=30)
        detail = (
            await client.get(f"/events/{answer['event_id']}", headers=auth(ADMIN_TOKEN))
        ).json()

    [delivery] = detail["deliveries"]
    assert delivery["state"] == "delivered"
    [run] = prefect.flow_runs(flow_id)
    assert run["id"] == delivery["flow_run_id"]
    assert [a["status_code"] for a in delivery["attempts_made"]] == [409, 201]


async def test_a_replay_keeps_the_flow_run_unless_a_new_run_is_asked_for(
    fast_retries: TargetSettings, prefect: PrefectServer, flow_id: str
) -> None:
    settings = fast_retries(prefect.api_url, flow_id)
    async with open_client(settings) as client:
        answer = (
            await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
        ).json()
        delivery_id = answer["deliveries"][0]["id"]
        await client.post(f"/deliveries/{delivery_id}/replay", headers=auth(ADMIN_TOKEN))
        await settled(client, within=30)
        assert len(prefect.flow_runs(flow_id)) == 1

        await client.post(
            f"/events/{answer['event_id']}/replay?new_run=true", headers=auth(ADMIN_TOKEN)
        )
        await settled(client, within=30)
        still_pending = await client.post(
            f"/deliveries/{delivery_id}/replay", headers=auth(ADMIN_TOKEN)
        )

    runs = prefect.flow_runs(flow_id)
    assert len(runs) == 2
    assert (
        sorted(r["idempotency_key"].split(":replay-")[0] for r in runs)
        == [answer["execution_id"]] * 2
    )
    assert still_pending.status_code == 202  # delivered again, so it could be replayed again

"""BRIDGE_FOLLOW_RUNS=false, against the real Prefect server: the service asks Prefect
nothing of its runs (no follower task, no request counted), the run it makes reads "not
followed" in the admin API and ``/metrics``, and a run it followed before the switch is
no longer claimed to be followed (it keeps its state as last seen); the console's
overview says following is off."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from app.storage.history import History
from tests.support.console import sign_in
from tests.support.erathos import webhook_body
from tests.support.follow import delivered
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.stores import open_store
from tests.support.tokens import ADMIN_TOKEN, TOKEN, auth
from tests.support.waiting import eventually
from tools.localprefect import PrefectServer

pytestmark = pytest.mark.anyio


async def listed(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    page = await client.get("/events", headers=auth(ADMIN_TOKEN))
    assert page.status_code == 200, page.text
    found: list[dict[str, Any]] = page.json()["events"]
    return found


def metric(text: str, line: str) -> float | None:
    """The value of the sample ``line`` names (name and labels), None when absent."""
    for sample in text.splitlines():
        if sample.startswith(line + " "):
            return float(sample.rsplit(" ", 1)[1])
    return None


async def test_with_following_off_no_run_is_asked_for_and_every_run_reads_not_followed(
    make_settings: SettingsFactory, prefect: PrefectServer, flow_id: str
) -> None:
    settings = make_settings(
        prefect_api_url=prefect.api_url,
        prefect_flow_id=flow_id,
        admin_token=ADMIN_TOKEN,
        follow_runs=False,
        follow_interval="100ms",
    )
    before = await open_store(settings.database_url)
    try:  # a run made while following was on: followed, until the switch
        earlier = await delivered(before, "00000000-0000-4000-8000-000000000001")
    finally:
        await before.database.close()
    assert earlier.follow_due_at is not None
    body = webhook_body(table_name="orders")

    async with open_client(settings) as client:
        following = [t.get_name() for t in asyncio.all_tasks() if "follow" in t.get_name()]
        answer = await client.post("/webhooks/erathos", json=body, headers=auth(TOKEN))
        assert answer.status_code in (200, 202), answer.text

        async def delivered_now() -> bool:
            events = await listed(client)
            return any(
                d["state"] == "delivered"
                for event in events
                if event["execution_id"] == body["execution_id"]
                for d in event["deliveries"]
            )

        await eventually(delivered_now, within=30, what="the webhook's run made")
        events = {event["execution_id"]: event for event in await listed(client)}
        scraped = (await client.get("/metrics")).text
        await sign_in(client)
        overview = (await client.get("/ui/")).text

    assert following == []  # no follower task: nothing would ask Prefect for a run
    assert "Following flow runs is off" in overview
    [made] = events[body["execution_id"]]["deliveries"]
    assert made["flow_run_id"] is not None
    assert (made["followed"], made["run_state"]) == (False, None)
    for event in events.values():
        assert [d["followed"] for d in event["deliveries"]] == [False]
    assert metric(scraped, 'erathos_bridge_runs_followed{connection="default"}') == 0
    assert not [line for line in scraped.splitlines() if "follow_requests_total{" in line]
    database = await open_store(settings.database_url)
    try:
        kept = await History(database.database).get_delivery(earlier.id)
    finally:
        await database.database.close()
    assert kept is not None
    assert (kept.follow_due_at, kept.follow_owner) == (None, None)

"""Prefect probed when the service starts, in the background: an unreachable server,
refused credentials or an unknown flow or deployment is a warning naming the connection,
its URL, the route and the target, and shows in ``/readyz``; events are accepted and
queued all the same, and nothing waits for the probe."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.erathos import webhook_body
from tests.support.inprocess import GuardedSettings, SettingsFactory, open_client
from tests.support.stub import REFUSED_URL, Blackhole
from tests.support.tokens import ADMIN_TOKEN, auth
from tests.support.waiting import eventually
from tools.localprefect import PrefectServer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def blackhole() -> AsyncIterator[Blackhole]:
    async with Blackhole() as hole:
        yield hole


async def logged(logs: list[MutableMapping[str, Any]], message: str) -> MutableMapping[str, Any]:
    """The first line logged with ``message`` (waited for: the probe runs behind)."""
    await eventually(
        lambda: any(line["event"] == message for line in logs), within=10, what=message
    )
    return next(line for line in logs if line["event"] == message)


async def test_an_unreachable_prefect_is_a_warning_and_events_are_still_queued(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(
        prefect_api_url=REFUSED_URL, sync_wait="200ms", admin_token=ADMIN_TOKEN
    )
    with capture_logs() as logs:
        async with open_client(settings) as client:
            warning = await logged(logs, "prefect unreachable: events are accepted and queued")
            ready = await client.get("/readyz", headers=auth(ADMIN_TOKEN))
            answer = await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())

    assert warning["log_level"] == "warning"
    assert (warning["connection"], warning["api_url"], warning["routes"]) == (
        "default",
        REFUSED_URL,
        ["default"],
    )
    assert warning["detail"].startswith("unreachable: ConnectError")
    assert ready.status_code == 200
    [prefect] = ready.json()["prefect"]
    assert (prefect["reachable"], prefect["authorized"]) == (False, None)
    [target] = prefect["targets"]
    assert (target["route"], target["target"]) == ("default", f"flow {settings.prefect_flow_id}")
    assert target["state"] == "unchecked"
    assert answer.status_code == 202
    assert answer.json()["status"] == "queued"


async def test_refused_credentials_are_a_warning_and_show_in_readiness(
    guarded_settings: GuardedSettings, guarded_prefect: PrefectServer
) -> None:
    settings = guarded_settings("admin:wrong-password-here")
    with capture_logs() as logs:
        async with open_client(settings) as client:
            warning = await logged(logs, "prefect refuses the credentials: deliveries will fail")
            ready = (await client.get("/readyz", headers=auth(ADMIN_TOKEN))).json()

    assert (warning["connection"], warning["api_url"], warning["routes"]) == (
        "default",
        guarded_prefect.api_url,
        ["default"],
    )
    assert warning["detail"] == "credentials refused (HTTP 401)"
    [prefect] = ready["prefect"]
    assert (prefect["reachable"], prefect["authorized"]) == (True, False)
    assert [t["state"] for t in prefect["targets"]] == ["unchecked"]
    assert "wrong-password-here" not in json.dumps(logs) + json.dumps(ready)


async def test_an_unknown_flow_id_is_a_warning_naming_the_route_and_the_flow(
    make_settings: SettingsFactory, prefect: PrefectServer
) -> None:
    unknown = str(uuid.uuid4())
    settings = make_settings(
        prefect_api_url=prefect.api_url, prefect_flow_id=unknown, admin_token=ADMIN_TOKEN
    )
    with capture_logs() as logs:
        async with open_client(settings) as client:
            warning = await logged(logs, "prefect target unknown: deliveries will fail")
            ready = (await client.get("/readyz", headers=auth(ADMIN_TOKEN))).json()

    assert warning["log_level"] == "warning"
    assert (warning["connection"], warning["api_url"]) == ("default", prefect.api_url)
    assert (warning["route"], warning["target"]) == ("default", f"flow {unknown}")
    [prefect_status] = ready["prefect"]
    assert prefect_status["authorized"] is True
    [target] = prefect_status["targets"]
    assert (target["state"], target["id"]) == ("unknown", None)
    assert target["detail"] == f"flow {unknown} does not exist"


async def test_an_unknown_deployment_of_a_route_is_a_warning_naming_its_connection(
    make_settings: SettingsFactory, prefect: PrefectServer, flow_id: str, tmp_path: Path
) -> None:
    routes = {
        "connections": {"local": {"api_url": prefect.api_url}},
        "routes": [
            {"name": "known", "connection": "local", "flow_id": flow_id},
            {"name": "typo", "connection": "local", "deployment": "dbt/nope"},
        ],
    }
    routes_file = tmp_path / "routes.json"
    routes_file.write_text(json.dumps(routes))
    settings = make_settings(prefect_api_url=None, prefect_flow_id=None, routes_file=routes_file)
    with capture_logs() as logs:
        async with open_client(settings):
            warning = await logged(logs, "prefect target unknown: deliveries will fail")
            checked = await logged(logs, "prefect checked")

    assert (warning["connection"], warning["api_url"]) == ("local", prefect.api_url)
    assert (warning["route"], warning["target"]) == ("typo", "deployment dbt/nope")
    assert checked["targets"] == {"known": flow_id, "typo": "unknown"}


async def test_readiness_shows_each_targets_id_or_that_a_named_flow_is_not_created_yet(
    make_settings: SettingsFactory, prefect: PrefectServer, flow_id: str
) -> None:
    by_id = make_settings(
        prefect_api_url=prefect.api_url, prefect_flow_id=flow_id, admin_token=ADMIN_TOKEN
    )
    name = f"dbt-{uuid.uuid4().hex[:10]}"
    by_name = make_settings(
        prefect_api_url=prefect.api_url,
        prefect_flow_id=None,
        prefect_flow_name=name,
        admin_token=ADMIN_TOKEN,
    )

    async with open_client(by_id) as client:
        [found] = (await client.get("/readyz", headers=auth(ADMIN_TOKEN))).json()["prefect"][0][
            "targets"
        ]
    async with open_client(by_name) as client:
        [missing] = (await client.get("/readyz", headers=auth(ADMIN_TOKEN))).json()["prefect"][0][
            "targets"
        ]

    assert (found["state"], found["id"], found["target"]) == ("found", flow_id, f"flow {flow_id}")
    assert (missing["state"], missing["id"], missing["target"]) == (
        "not_created_yet",
        None,
        f"flow {name!r}",
    )


@pytest.mark.slow
async def test_a_prefect_that_never_answers_delays_neither_start_up_nor_events(
    make_settings: SettingsFactory, blackhole: Blackhole
) -> None:
    """Start-up, the event and both readiness checks all happen while the one start-up
    probe still waits for its answer: nothing waited for it, and no second probe went."""
    settings = make_settings(
        prefect_api_url=blackhole.api_url,
        prefect_timeout="30s",
        sync_wait="200ms",
        shutdown_grace="1s",  # the delivery, stuck too, is given back at the end
        admin_token=ADMIN_TOKEN,
    )
    async with open_client(settings) as client:
        await eventually(lambda: blackhole.accepted >= 1, within=30, what="Prefect is probed")
        [probe] = probes_of("default")
        answer = await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
        ready = await client.get("/readyz", headers=auth(ADMIN_TOKEN))
        again = await client.get("/readyz", headers=auth(ADMIN_TOKEN))
        still_out = probes_of("default")
        unanswered = not probe.done()

    assert still_out == [probe]  # the same probe: no second one went
    assert unanswered  # everything above happened while it waited
    assert again.json()["prefect"] == ready.json()["prefect"]
    assert answer.status_code == 202
    assert ready.status_code == 200
    [prefect] = ready.json()["prefect"]
    assert prefect["detail"] == "no answer within 3 s"  # readiness's own wait, not the probe's
    assert [t["state"] for t in prefect["targets"]] == ["unchecked"]


def probes_of(connection: str) -> list[asyncio.Task[object]]:
    """The probes of ``connection`` in flight (tasks of app/delivery/probe.py's watch)."""
    return [
        task for task in asyncio.all_tasks() if task.get_name() == f"prefect probe {connection}"
    ]

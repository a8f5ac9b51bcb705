"""Sets with real processes: ``kill -9`` between the last member's acknowledgement and the
set's flow run still makes exactly one run, on one service (SQLite) and with two
replicas (PostgreSQL); with two replicas, exactly one of them closes a window at its
deadline."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.storage.schema import events, set_windows
from tests.support.databases import query
from tests.support.processes import ServiceProcess, fast_service_environment
from tests.support.setfiles import load, runs_tagged, set_name, write_routes
from tests.support.tokens import TOKEN, auth
from tests.support.waiting import eventually
from tools.localprefect import PrefectServer, ServedFlow

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MEMBERS = ["raw_shop.orders", "raw_shop.customers", "raw_shop.payments"]
UNREACHABLE = "http://127.0.0.1:9/api"  # nothing listens: no flow run can be made from here


@pytest.fixture(scope="module")
def served(
    prefect: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedFlow]:
    home = tmp_path_factory.mktemp("flow-home")
    flow = ServedFlow(prefect, home=home, log_path=home / "flow.log")
    flow.start()
    try:
        yield flow
    finally:
        flow.stop()


def service(
    tmp_path: Path, name: str, api_url: str, database_url: str, routes: Path
) -> ServiceProcess:
    env = fast_service_environment(
        api_url, str(uuid.uuid4()), database_url, BRIDGE_ROUTES_FILE=str(routes)
    )
    return ServiceProcess(env, tmp_path, tmp_path / f"{name}.log")


async def send_to(target: ServiceProcess, body: dict[str, str]) -> dict[str, Any]:
    async with target.client() as client:
        answer = await client.post("/webhooks/erathos", json=body, headers=auth(TOKEN))
    assert answer.status_code == 202, answer.text
    found: dict[str, Any] = answer.json()
    return found


def executions_of(prefect: PrefectServer, name: str) -> list[list[str]]:
    """Each run of the set: the execution ids of its loads."""
    return [
        [x["execution_id"] for x in run["parameters"]["loads"]]
        for run in runs_tagged(prefect, name)
    ]


async def test_kill_9_after_the_last_members_acknowledgement_still_makes_exactly_one_run(
    tmp_path: Path, prefect: PrefectServer, served: ServedFlow
) -> None:
    name = set_name()
    routes = write_routes(tmp_path / "routes.json", name, MEMBERS, {"within": "2h"})
    url = f"sqlite:///{tmp_path / 'bridge.db'}"
    bodies = [load("orders"), load("customers"), load("payments")]
    cut_off = service(tmp_path, "first", UNREACHABLE, url, routes)
    await cut_off.launch()
    try:
        answers = [await send_to(cut_off, body) for body in bodies]
        cut_off.signal(signal.SIGKILL)  # acknowledged; its run cannot have been made
        await asyncio.to_thread(cut_off.wait)
    finally:
        cut_off.stop()
    assert answers[-1]["sets"][0]["state"] == "completed"
    assert runs_tagged(prefect, name) == []

    restarted = service(tmp_path, "second", prefect.api_url, url, routes)
    await restarted.launch()
    try:
        await restarted.settled(within=60)
    finally:
        restarted.stop()

    assert executions_of(prefect, name) == [[b["execution_id"] for b in bodies]]


async def test_two_replicas_on_postgresql_one_killed_after_the_last_acknowledgement_make_one_run(
    tmp_path: Path, prefect: PrefectServer, served: ServedFlow, postgres_url: str
) -> None:
    name = set_name()
    routes = write_routes(tmp_path / "routes.json", name, MEMBERS, {"within": "2h"})
    bodies = [load("orders"), load("customers"), load("payments")]
    survivor = service(tmp_path, "survivor", prefect.api_url, postgres_url, routes)
    doomed = service(tmp_path, "doomed", UNREACHABLE, postgres_url, routes)
    for replica in (survivor, doomed):
        replica.spawn()
    try:
        for replica in (survivor, doomed):
            await replica.ready()
        await send_to(survivor, bodies[0])
        await send_to(doomed, bodies[1])
        last = await send_to(doomed, bodies[2])  # completes the window on the doomed one
        doomed.signal(signal.SIGKILL)
        await asyncio.to_thread(doomed.wait)
        assert last["sets"][0]["state"] == "completed"
        await survivor.settled(within=60)
    finally:
        survivor.stop()
        doomed.stop()

    assert executions_of(prefect, name) == [[b["execution_id"] for b in bodies]]


async def test_with_two_replicas_on_postgresql_exactly_one_closes_a_window_at_its_deadline(
    tmp_path: Path, prefect: PrefectServer, served: ServedFlow, postgres_url: str
) -> None:
    name = set_name()
    routes = write_routes(tmp_path / "routes.json", name, MEMBERS, {"within": "2s"})
    orders, customers = load("orders"), load("customers")
    replicas = [service(tmp_path, n, prefect.api_url, postgres_url, routes) for n in "ab"]
    for replica in replicas:
        replica.spawn()
    try:
        for replica in replicas:
            await replica.ready()
        await send_to(replicas[0], orders)
        await send_to(replicas[1], customers)

        async def closed() -> bool:
            [late] = await query(
                postgres_url,
                select(func.count())
                .select_from(set_windows)
                .where(set_windows.c.set_name == name, set_windows.c.state == "late"),
            )
            return late == 1

        await eventually(closed, within=30, what="the window closed at its deadline")
        for replica in replicas:
            await replica.settled(within=60)
    finally:
        for replica in replicas:
            replica.stop()

    [window_events] = await query(
        postgres_url,
        select(func.count())
        .select_from(events)
        .where(events.c.execution_id.startswith(f"set/{name}/")),
    )
    assert window_events == 1
    closings = [
        line
        for replica in replicas
        for line in replica.log_path.read_text().splitlines()
        if '"set window late"' in line
    ]
    assert len(closings) == 1, closings
    assert executions_of(prefect, name) == [[orders["execution_id"], customers["execution_id"]]]

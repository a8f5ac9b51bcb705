"""Probes of connections whose circuit is open: each runs beside the claim loop, with a
deadline of its own, one per connection at a time, so a connection that never answers
holds up only its own probe, never the deliveries of the others."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import app.delivery.gate
from app.config import PREFECT_API_VERSION
from app.delivery.client import AttemptResult, Outcome, PrefectConnection
from app.delivery.gate import FAILURES_TO_OPEN, PROBE_FIRST, Circuit, ConnectionGate
from app.intake.ingest import new_event
from app.routing.event import ErathosEvent
from app.service import open_bridge
from app.storage.history import History
from app.storage.records import DeliveryState, NewDelivery, NewEvent
from tests.support.erathos import webhook_body
from tests.support.inprocess import SettingsFactory
from tests.support.stub import REFUSED_URL, Blackhole, mock_connection
from tests.support.waiting import eventually
from tools.localprefect import PrefectServer

pytestmark = pytest.mark.anyio

DOWN = AttemptResult(Outcome.TRANSIENT, 20.0, 503, "HTTP 503: busy")
SUCCESS = AttemptResult(Outcome.DELIVERED, 20.0, 201, flow_run_id="run-1")
# Only keeps a broken test from hanging: a probe that held up the claim loop, or the
# stopping service, would hold it for PROBE_TIMEOUT (patched to an hour), far beyond this.
HANG_GUARD = 60.0


@pytest.fixture
async def blackhole() -> AsyncIterator[Blackhole]:
    async with Blackhole() as hole:
        yield hole


def open_circuit(gate: ConnectionGate) -> None:
    for _ in range(FAILURES_TO_OPEN):
        gate.observe(DOWN)
    assert gate.circuit is Circuit.OPEN


async def test_deliveries_keep_flowing_while_another_connections_probe_gets_no_answer(
    make_settings: SettingsFactory,
    prefect: PrefectServer,
    flow_id: str,
    blackhole: Blackhole,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app.delivery.gate, "PROBE_TIMEOUT", 3600.0)  # stuck for the whole test
    stuck_job = str(uuid.uuid4())  # never sent: the blackhole's circuit is opened by hand
    routes = {
        "connections": {"blackhole": {"api_url": blackhole.api_url}},
        "routes": [
            {"name": "stuck", "connection": "blackhole", "jobs": [stuck_job], "flow_id": flow_id},
            {"name": "dbt", "flow_id": flow_id},  # every job, on the environment's connection
        ],
    }
    routes_file = tmp_path / "routes.json"
    routes_file.write_text(json.dumps(routes))
    settings = make_settings(
        prefect_api_url=prefect.api_url,
        routes_file=routes_file,
        prefect_timeout="30s",  # what a delivery (and the old inline probe) may wait
        lease="60s",
    )
    async with asyncio.timeout(HANG_GUARD), open_bridge(settings) as bridge:
        open_circuit(bridge.dispatcher.gates["blackhole"])
        await eventually(
            lambda: blackhole.accepted == 1, within=HANG_GUARD, what="the probe is sent"
        )
        [probe] = [task for task in asyncio.all_tasks() if task.get_name() == "probe-blackhole"]

        for _ in range(3):
            body = webhook_body()
            new = new_event(bridge, ErathosEvent.model_validate(body), body)
            # Stored unclaimed, as a retry or a backlog is: the claim loop must take it.
            [queued] = (await bridge.store.record_event(new)).deliveries
            assert queued.route == "dbt"
            await eventually(
                functools.partial(delivered, bridge.history, queued.id),
                within=HANG_GUARD,
                what="the healthy connection's delivery is sent",
                every=0.02,
            )
            assert not probe.done()  # delivered while the probe still waits for its answer
        assert blackhole.accepted == 1  # one probe at a time for the connection

    assert len(prefect.flow_runs(flow_id)) == 3
    assert probe.cancelled()  # the stopping service cancelled the stuck probe, never awaited it


async def delivered(history: History, delivery_id: str) -> bool:
    found = await history.get_delivery(delivery_id)
    return found is not None and found.state is DeliveryState.DELIVERED


async def test_a_probe_that_gets_no_answer_gives_up_at_its_deadline(
    blackhole: Blackhole, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection itself would wait an hour for the answer: the probe returns, with
    the connection still unreachable, because its own deadline (0.2 s) ran out."""
    monkeypatch.setattr(app.delivery.gate, "PROBE_TIMEOUT", 0.2)
    gate = ConnectionGate(max_concurrency=4)
    open_circuit(gate)
    async with (
        PrefectConnection(
            "blackhole", blackhole.api_url, api_version=PREFECT_API_VERSION, timeout=3600.0
        ) as connection,
        asyncio.timeout(HANG_GUARD),
    ):
        await gate.probe(connection)

    assert blackhole.accepted == 1  # it asked, and was never answered
    assert (gate.circuit, gate.admits) == (Circuit.OPEN, False)
    assert not gate.needs_probe()  # the next one after the usual interval
    await eventually(
        gate.needs_probe, within=PROBE_FIRST + HANG_GUARD, what="the next probe is due"
    )


async def test_a_probe_answered_after_a_delivery_closed_the_circuit_changes_nothing() -> None:
    gate = ConnectionGate(max_concurrency=4)
    open_circuit(gate)
    answer = asyncio.Event()

    async def late_health(request: httpx.Request) -> httpx.Response:
        await answer.wait()
        return httpx.Response(200, json=True if request.url.path == "/api/health" else [])

    async with mock_connection(late_health) as connection:
        probe = asyncio.create_task(gate.probe(connection))
        gate.observe(SUCCESS)  # a delivery in flight came back while the probe waited
        answer.set()
        await probe

    assert gate.circuit is Circuit.CLOSED


async def test_a_request_never_sent_is_not_taken_for_prefects_answer(
    make_settings: SettingsFactory,
) -> None:
    """A delivery whose stored event no longer renders (an older release's, say) is a
    dead letter, but nothing was sent: a half-open circuit waits for a real answer, and
    no request to Prefect is counted."""
    async with open_bridge(make_settings(prefect_api_url=REFUSED_URL), dispatch=False) as bridge:
        gate = bridge.dispatcher.gates["default"]
        open_circuit(gate)
        gate.circuit = Circuit.HALF_OPEN  # as a probe that got an answer leaves it
        unrenderable = {"execution_id": "exec-1", "rows": "many"}
        new = NewEvent("exec-1", unrenderable, [NewDelivery("default", "default", "exec-1")])
        [turn] = await bridge.dispatcher.deliver_new(await bridge.dispatcher.record(new), 5.0)
        metrics = bridge.metrics.exposition().decode()

    assert turn.delivery.state is DeliveryState.DEAD
    assert (turn.delivery.last_error or "").startswith("the stored event cannot be rendered")
    assert (gate.circuit, gate.recovered) == (Circuit.HALF_OPEN, False)
    sent = [
        line
        for line in metrics.splitlines()
        if line.startswith("erathos_bridge_prefect_request_duration_seconds_count")
    ]
    assert all(line.endswith(" 0.0") for line in sent), sent

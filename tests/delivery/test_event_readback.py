"""An emission counts as delivered only once Prefect has the event: Prefect answers 204
before it writes it, so the event is read back by id (the reads of one connection in
one request), sent again while it is absent, and a ``kill -9`` of a real Prefect in the
middle of a burst loses none."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

import app.delivery.readback
from app.delivery.client import AttemptResult, Outcome
from app.delivery.readback import KEPT, ReadBack, confirmed, kept_already
from app.routing.event import ErathosEvent
from app.routing.prefect_event import NAMESPACE, emission_key
from app.storage.records import Claim, DeliveryRecord, DeliveryState, EventRecord
from tests.support.erathos import webhook_body
from tests.support.inprocess import TargetSettings, open_client
from tests.support.stub import mock_connection, recording
from tests.support.tokens import ADMIN_TOKEN, auth
from tests.support.waiting import eventually, pending_count, settled
from tools.localprefect import PrefectServer

pytestmark = pytest.mark.anyio

SENT = AttemptResult(Outcome.DELIVERED, 4.0, 204)


def claim_of(execution_id: str, attempts: int = 1) -> Claim:
    """An emission's delivery of a stored load, with its event's id as its key."""
    payload = webhook_body(execution_id=execution_id)
    event = EventRecord(
        id=uuid.uuid4().hex,
        execution_id=execution_id,
        received_at=1_800_000_000.0,
        job_id=None,
        schema_name=None,
        table_name=None,
        status=None,
        payload=payload,
        ignored_reason=None,
    )
    delivery = DeliveryRecord(
        id=uuid.uuid4().hex,
        event_id=event.id,
        route="prefect-event",
        connection="default",
        idempotency_key=emission_key(ErathosEvent.model_validate(payload)),
        state=DeliveryState.PENDING,
        attempts=attempts,
        created_at=0.0,
        window_started_at=0.0,
        next_attempt_at=0.0,
        lease_owner=None,
        lease_expires_at=None,
        flow_run_id=None,
        flow_run_url=None,
        last_status_code=None,
        last_error=None,
        finished_at=None,
    )
    return Claim(delivery, event)


def kept_events(kept: set[str]) -> Any:
    """Prefect's events filter over the ids in ``kept``: the events among those asked for."""

    def answer(request: httpx.Request) -> httpx.Response:
        asked = json.loads(request.content)["filter"]["id"]["id"]
        events = [{"id": event_id} for event_id in asked if event_id in kept]
        return httpx.Response(200, json={"events": events, "total": len(events)})

    return answer


async def test_reads_asked_together_go_to_prefect_in_one_request_of_at_most_50() -> None:
    ids = [str(uuid.uuid4()) for _ in range(70)]
    seen, handler = recording(kept_events(set(ids[::2])))
    async with mock_connection(handler) as connection:
        readback = ReadBack(connection)
        when = datetime.now(UTC)
        answers = await asyncio.gather(*(readback.kept(event_id, when) for event_id in ids))
        await readback.close()

    assert answers == [index % 2 == 0 for index in range(70)]
    assert [len(json.loads(r.content)["filter"]["id"]["id"]) for r in seen] == [50, 20]
    assert {str(r.url).rsplit("/api/", 1)[1] for r in seen} == {"events/filter"}


async def test_a_204_counts_once_the_event_is_read_back_and_until_then_it_is_not() -> None:
    claim = claim_of(str(uuid.uuid4()))
    event_id = claim.delivery.idempotency_key
    kept: set[str] = set()
    reads = 0

    def prefect(request: httpx.Request) -> httpx.Response:
        nonlocal reads
        reads += 1
        if reads == 2:  # Prefect writes it between the first read and the second
            kept.add(event_id)
        answer: httpx.Response = kept_events(kept)(request)
        return answer

    async with mock_connection(prefect) as connection:
        readback = ReadBack(connection)
        delivered = await confirmed(claim, SENT, readback, waits=(0.0, 0.0, 0.0))
        kept.clear()
        lost = await confirmed(claim, SENT, readback, waits=(0.0, 0.0))
        again = await kept_already(claim_of(claim.event.execution_id, attempts=2), readback)
        await readback.close()

    assert delivered == SENT
    assert lost.outcome is Outcome.TRANSIENT
    assert lost.status_code == 204
    assert lost.error is not None
    assert "answered HTTP 204 but had not kept the event" in lost.error
    assert again is None  # not there: it is sent again


async def test_an_emission_tried_before_that_prefect_has_is_delivered_without_a_resend() -> None:
    claim = claim_of(str(uuid.uuid4()), attempts=2)
    seen, handler = recording(kept_events({claim.delivery.idempotency_key}))
    async with mock_connection(handler) as connection:
        readback = ReadBack(connection)
        kept = await kept_already(claim, readback)
        await readback.close()

    assert kept is not None
    assert (kept.outcome, kept.status_code, kept.response_excerpt) == (
        Outcome.DELIVERED,
        200,
        KEPT,
    )
    assert [str(r.url).rsplit("/api/", 1)[1] for r in seen] == ["events/filter"]


async def test_a_prefect_that_keeps_no_event_never_has_an_emission_delivered(
    events_on: TargetSettings,
    prefect: PrefectServer,
    flow_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real server without its services (no event persister) answers 204 and keeps
    nothing: the emission stays pending, sent again, and says why."""
    monkeypatch.setattr(app.delivery.readback, "READ_WAITS", (0.2,))
    settings = events_on(prefect.api_url, flow_id, retry_base="200ms", retry_cap="200ms")
    async with open_client(settings) as client:
        answer = (
            await client.post(
                "/webhooks/erathos", json=webhook_body(status="FAILED"), headers=auth()
            )
        ).json()

        async def tried_twice() -> bool:
            found = await client.get(f"/events/{answer['event_id']}", headers=auth(ADMIN_TOKEN))
            [emission] = found.json()["deliveries"]
            return len(emission["attempts_made"]) >= 2

        await eventually(tried_twice, within=20, what="the emission sent again")
        detail = await client.get(f"/events/{answer['event_id']}", headers=auth(ADMIN_TOKEN))

    [emission] = detail.json()["deliveries"]
    assert emission["state"] == "pending"
    first, second = emission["attempts_made"][:2]
    assert (first["outcome"], first["status_code"]) == ("transient", 204)
    assert "but had not kept the event" in first["error"]
    assert (second["outcome"], second["status_code"]) == ("transient", 204)  # sent again


def events_kept(server: PrefectServer, ids: list[str]) -> set[str]:
    """Which of the events Prefect has in its store (asked 50 at a time)."""
    found: set[str] = set()
    for start in range(0, len(ids), 50):
        query = {"filter": {"id": {"id": ids[start : start + 50]}}, "limit": 50}
        found |= {e["id"] for e in server.request("POST", "events/filter", query)["events"]}
    return found


def emissions_answered(metrics: str) -> float:
    """How many emission attempts Prefect answered with a 2xx, from ``/metrics``."""
    pattern = r'erathos_bridge_delivery_attempts_total\{[^}]*kind="event"[^}]*status="2xx"\} (\S+)'
    found = re.search(pattern, metrics)
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
async def test_a_kill_9_of_prefect_in_the_middle_of_a_burst_loses_no_event(
    events_on: TargetSettings,
) -> None:
    # Prefect writes the events it holds every 10 s here (and never for a full batch):
    # whatever it answered 204 to since its last write is what a kill -9 loses.
    server = PrefectServer.launch(
        services=True,
        settings={
            "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "100000",
            "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "10",
        },
    )
    try:
        flow_id = server.create_flow(f"dbt-{uuid.uuid4().hex[:10]}")
        settings = events_on(
            server.api_url,
            flow_id,
            prefect_timeout="2s",
            lease="30s",
            retry_base="200ms",
            sync_wait="0s",
        )
        # FAILED loads (no flow run, only the events) of this minute: Prefect deletes events
        # that occurred more than 7 days ago.
        now = datetime.now(UTC)
        when = {"finished_at_date": f"{now:%Y-%m-%d}", "finished_at_time": f"{now:%H:%M}"}
        bodies = [webhook_body(status="FAILED", **when) for _ in range(150)]
        async with open_client(settings) as client:
            for body in bodies:
                answer = await client.post("/webhooks/erathos", json=body, headers=auth())
                assert answer.status_code == 202, answer.text

            async def answered(count: int) -> bool:
                return emissions_answered((await client.get("/metrics")).text) >= count

            await eventually(lambda: answered(40), within=60, what="40 events answered 204")
            server.kill()
            assert await pending_count(client) > 0  # the kill really cut the burst
            server.start()
            await settled(client, within=180)

        ids = [
            str(uuid.uuid5(NAMESPACE, f"{body['execution_id']}/erathos.job.failed"))
            for body in bodies
        ]
        assert events_kept(server, ids) == set(ids)
    finally:
        server.stop()

"""What the console says of flow runs and emissions (app.console.runs): an event that only
became a Prefect event reads "event sent", never "delivered" nor "flow run: none yet";
freshness percentiles come from the histogram's buckets and read as durations."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime

import pytest

from app.console.runs import duration_text, event_outcome, freshness_rows, outcome_of
from app.storage.records import DeliveryRecord, DeliveryState, EventState
from app.storage.runs import FRESHNESS_BUCKETS, FROM_FINISH, FROM_RECEIPT, bucket_of, percentile
from tests.support.console import sign_in
from tests.support.erathos import webhook_body
from tests.support.inprocess import TargetSettings, open_client
from tests.support.tokens import auth
from tests.support.waiting import settled
from tools.localprefect import PrefectServer


def delivery(route: str, state: DeliveryState) -> DeliveryRecord:
    return DeliveryRecord(
        "d", "e", route, "default", "k", state, 1, 0.0, 0.0, 0.0, None, None, None, None, None,
        None, None,
    )  # fmt: skip


def test_an_emission_prefect_took_reads_event_sent_and_a_flow_run_its_state() -> None:
    sent = delivery("prefect-event", DeliveryState.DELIVERED)
    run = delivery("dbt", DeliveryState.DELIVERED)

    assert outcome_of(sent) == "event sent"
    assert outcome_of(delivery("prefect-event", DeliveryState.DEAD)) == "dead"
    assert outcome_of(run) == "delivered"
    assert event_outcome(EventState.DELIVERED, [sent]) == "event sent"
    assert event_outcome(EventState.DELIVERED, [run, sent]) == "delivered"
    assert event_outcome(EventState.PENDING, [sent]) == "pending"


def test_freshness_percentiles_are_read_from_the_buckets_as_prometheus_does() -> None:
    counts = [0] * (len(FRESHNESS_BUCKETS) + 1)
    for seconds in (40.0, 50.0, 55.0, 100.0):  # three in (30, 60], one in (60, 120]
        counts[bucket_of(seconds)] += 1

    assert percentile(counts, 0.5) == pytest.approx(30 + 30 * (2 / 3))  # rank 2 of 3 in (30, 60]
    assert percentile(counts, 0.95) == pytest.approx(60 + 60 * (3.8 - 3))  # in (60, 120]
    assert percentile([0] * len(counts), 0.5) is None
    overflow = [0] * len(FRESHNESS_BUCKETS) + [1]
    assert percentile(overflow, 0.5) == math.inf
    [row] = freshness_rows({("dbt", FROM_FINISH): counts, ("dbt", FROM_RECEIPT): overflow})
    assert (row.route, row.runs) == ("dbt", 1)
    assert duration_text(row.finish_p50) == "50 s"
    assert duration_text(row.finish_p95) == "108 s"
    assert duration_text(row.receipt_p50) == "over 6.0 h"
    assert duration_text(None) == "-"


@pytest.mark.slow
@pytest.mark.anyio
async def test_an_event_that_only_became_a_prefect_event_reads_event_sent(
    events_on: TargetSettings, prefect_with_services: PrefectServer
) -> None:
    server = prefect_with_services
    settings = events_on(server.api_url, server.create_flow(f"dbt-{uuid.uuid4().hex[:10]}"))
    now = datetime.now(UTC)
    when = {"finished_at_date": f"{now:%Y-%m-%d}", "finished_at_time": f"{now:%H:%M}"}
    body = webhook_body(status="FAILED", **when)  # no route wants it: emitted only
    async with open_client(settings) as client:
        answer = (await client.post("/webhooks/erathos", json=body, headers=auth())).json()
        await settled(client, within=30)  # Prefect writes its events every few seconds
        await sign_in(client)
        page = (await client.get(f"/ui/events/{answer['event_id']}")).text
        listing = (await client.get("/ui/events")).text

    assert [d["route"] for d in answer["deliveries"]] == ["prefect-event"]
    assert '<h1>Event <span class="badge s-delivered">event sent</span>' in page
    assert "Prefect event</dt>" in page
    assert "sent: Prefect took it" in page
    assert "none yet" not in page
    assert "flow run</dt>" not in page
    assert ">event sent</span>" in listing

"""``GET /metrics`` after a known sequence of events against the real Prefect server (behind
a fault-injecting front): every counter, gauge and histogram count is exactly what
happened, each app has its own registry, and the metrics token is enforced."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import structlog
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app import __version__, errors
from app.delivery.gate import EPOCH_COMPLETIONS
from app.logs import configure_logging
from app.metrics import REJECTED_BY_CODE, REJECTION_REASONS
from tests.support.erathos import webhook_body
from tests.support.faults import FaultProxy
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.tokens import ADMIN_TOKEN, auth
from tests.support.waiting import settled
from tools.localprefect import PrefectServer

pytestmark = pytest.mark.anyio

UNKNOWN_FLOW = "5d3c35a6-9b1e-4a0e-9a57-2f7f2bd1c0de"
METRICS_TOKEN = "test-metrics-token-0123456789"


class Scrape:
    """One scrape, parsed: ``value(name, **labels)`` is the sample's value (0 if absent)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((f"erathos_bridge_{name}", frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient, token: str | None = None) -> Scrape:
    response = await client.get("/metrics", headers=auth(token) if token else {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return Scrape(response.text)


async def test_the_scraped_values_match_a_known_sequence_exactly(
    tmp_path: Path, make_settings: SettingsFactory, prefect: PrefectServer, flow_id: str
) -> None:
    known_job, unknown_flow_job, unrouted_job = (str(uuid.uuid4()) for _ in range(3))
    routes = [
        {"name": "known", "jobs": [known_job], "flow_id": flow_id},
        {"name": "unknown-flow", "jobs": [unknown_flow_job], "flow_id": UNKNOWN_FLOW},
    ]
    routes_file = tmp_path / "routes.json"
    routes_file.write_text(json.dumps({"routes": routes}))
    # The first flow run creation passes, the second gets a 503 (then passes on retry).
    proxy = FaultProxy(f"http://127.0.0.1:{prefect.port}", ["pass", "503"])
    await proxy.start()
    settings = make_settings(
        prefect_api_url=f"{proxy.url}/api",
        routes_file=routes_file,
        admin_token=ADMIN_TOKEN,
        retry_base="100ms",
        retry_cap="1s",
        db_lock_timeout="200ms",
    )
    delivered = webhook_body(job_id=known_job)
    try:
        async with open_client(settings) as client:
            answers = [
                await client.post("/webhooks/erathos", json=delivered, headers=auth()),
                await client.post("/webhooks/erathos", json=delivered, headers=auth()),
                await client.post("/webhooks/erathos", json=delivered),
                await client.post("/webhooks/erathos", json={"status": "FINISHED"}, headers=auth()),
            ]
            retried = await client.post(
                "/webhooks/erathos", json=webhook_body(job_id=known_job), headers=auth()
            )
            await settled(client, within=30)
            dead = await client.post(
                "/webhooks/erathos", json=webhook_body(job_id=unknown_flow_job), headers=auth()
            )
            ignored = await client.post(
                "/webhooks/erathos", json=webhook_body(job_id=unrouted_job), headers=auth()
            )
            # Another process holds the database's write lock past our lock timeout.
            locker = sqlite3.connect(tmp_path / "bridge.db", isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            try:
                unstored = await client.post(
                    "/webhooks/erathos", json=webhook_body(job_id=known_job), headers=auth()
                )
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            metrics = await scrape(client)
    finally:
        await proxy.stop()

    assert [a.status_code for a in answers] == [202, 200, 401, 422]
    assert retried.json()["status"] == "queued"
    assert dead.json()["status"] == "failed"
    assert ignored.json()["status"] == "ignored"
    assert unstored.status_code == 503
    assert proxy.applied == ["pass", "503", "pass", "pass"]

    assert metrics.value("events_received_total") == 8
    assert metrics.value("events_accepted_total") == 3  # delivered, retried, dead
    rejected = {r: metrics.value("events_rejected_total", reason=r) for r in REJECTION_REASONS}
    assert rejected == {
        "auth": 1,
        "size": 0,
        "media_type": 0,
        "invalid_json": 0,
        "validation": 1,
        "store_unavailable": 1,
        "rate_limited": 0,
        "body_timeout": 0,
        "forbidden": 0,
        "target_unverifiable": 0,
        "duplicate": 1,
        "no_route": 1,
    }
    default = {"connection": "default"}
    runs = {"kind": "flow_run", **default}  # no event is emitted: BRIDGE_PREFECT_EVENTS is off
    assert metrics.value("deliveries_total", outcome="delivered", **runs) == 2
    assert metrics.value("deliveries_total", outcome="dead", **runs) == 1
    assert metrics.value("dead_letters_total", reason="permanent", **runs) == 1
    assert metrics.value("dead_letters_total", reason="exhausted", **runs) == 0
    attempts = {
        status: metrics.value("delivery_attempts_total", status=status, **runs)
        for status in ("2xx", "3xx", "401", "403", "429", "4xx", "5xx", "timeout", "error")
    }
    assert attempts == {
        "2xx": 2,
        "3xx": 0,
        "401": 0,
        "403": 0,
        "429": 0,
        "4xx": 1,  # Prefect's 409 for the unknown flow
        "5xx": 1,
        "timeout": 0,
        "error": 0,
    }
    for outcome, count in (("delivered", 2), ("transient", 1), ("permanent", 1)):
        labels = {"outcome": outcome, **runs}
        assert metrics.value("prefect_request_duration_seconds_count", **labels) == count
        assert metrics.value("prefect_request_duration_seconds_sum", **labels) > 0
    assert metrics.value("event_to_flow_run_seconds_count") == 2
    assert metrics.value("event_to_flow_run_seconds_bucket", le="+Inf") == 2
    assert metrics.value("deliveries_pending", **default) == 0
    assert metrics.value("oldest_pending_age_seconds", **default) == 0
    # The window is measured over EPOCH_COMPLETIONS flow runs: two are far from that.
    assert EPOCH_COMPLETIONS > 2
    assert metrics.value("concurrency_window", **default) == 1
    assert metrics.value("prefect_requests_in_flight", **default) == 0
    assert metrics.value("circuit_state", state="closed", **default) == 1
    assert metrics.value("circuit_state", state="open", **default) == 0
    # No unbounded label: nothing of an event (execution id, table) is a label value.
    for execution_id in (delivered["execution_id"], retried.json()["execution_id"]):
        assert execution_id not in metrics.text
    assert "orders" not in metrics.text
    assert "_created" not in metrics.text
    assert 'kind="event"' not in metrics.text


async def test_pending_deliveries_and_the_oldest_age_show_while_prefect_is_down(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(prefect_api_url="http://127.0.0.1:9/api", sync_wait="100ms")
    async with open_client(settings) as client:
        for _ in range(3):
            await client.post(
                "/webhooks/erathos", json=webhook_body(job_id=str(uuid.uuid4())), headers=auth()
            )
        metrics = await scrape(client)

    assert metrics.value("deliveries_pending", connection="default") == 3
    assert 0 < metrics.value("oldest_pending_age_seconds", connection="default") < 30
    runs = {"connection": "default", "kind": "flow_run"}
    assert metrics.value("delivery_attempts_total", status="error", **runs) >= 3
    assert metrics.value("deliveries_total", outcome="delivered", **runs) == 0


async def test_each_app_counts_in_its_own_registry(make_settings: SettingsFactory) -> None:
    first_settings = make_settings(sync_wait="100ms")
    async with open_client(first_settings) as first, open_client(first_settings) as second:
        await first.post("/webhooks/erathos", json={})
        await first.post("/webhooks/erathos", json={})
        await second.post("/webhooks/erathos", json={})
        counts = [(await scrape(c)).value("events_received_total") for c in (first, second)]

    assert counts == [2, 1]


async def test_no_created_series_for_the_services_registry_alone(
    make_settings: SettingsFactory,
) -> None:
    async with open_client(make_settings(sync_wait="100ms")) as client:
        await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
        metrics = await scrape(client)
    other = CollectorRegistry()
    Counter("other_requests", "another registry of the same process", registry=other).inc()

    assert not [line for line in metrics.text.splitlines() if "_created" in line]
    assert metrics.value("events_received_total") == 1
    # Histograms are still there, less their _created.
    assert "erathos_bridge_event_to_flow_run_seconds_count 0.0" in metrics.text.splitlines()
    # Dropped from the service's own scrape, not by prometheus_client's process-wide switch.
    assert "other_requests_created" in generate_latest(other).decode()


async def test_a_metrics_token_is_required_when_configured(make_settings: SettingsFactory) -> None:
    async with open_client(make_settings(metrics_token=METRICS_TOKEN)) as client:
        refused = await client.get("/metrics")
        wrong = await client.get("/metrics", headers=auth("not-the-metrics-token"))
        metrics = await scrape(client, METRICS_TOKEN)

    assert (refused.status_code, wrong.status_code) == (401, 401)
    assert metrics.value("build_info", version=__version__) == 1


def test_every_rejecting_error_has_a_reason_label() -> None:
    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.BridgeError) and cls.status_code >= 400
    }
    # query_timeout answers an operator's read only: a webhook never reads that way.
    answered_by_webhooks = codes - {"not_found", "conflict", "internal_error", "query_timeout"}
    assert answered_by_webhooks <= set(REJECTED_BY_CODE)


class GoneStderr:
    """A stderr whose every write fails, as a closed pipe's does."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def isatty(self) -> bool:
        return False


async def test_log_lines_the_sink_refused_are_counted(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    monkeypatch.setattr(sys, "stderr", GoneStderr())
    try:
        configure_logging("json", "INFO")
        async with open_client(make_settings()) as client:
            before = (await scrape(client)).value("log_lines_lost_total")
            structlog.get_logger("test").warning("one line lost")
            logging.getLogger("uvicorn.error").warning("and a stdlib record")
            await asyncio.sleep(0)  # the loop's turn, when the batch is written
            after = (await scrape(client)).value("log_lines_lost_total")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        structlog.reset_defaults()

    # At least these two: the service's own tasks (its probe of an unreachable Prefect,
    # say) may log in the same moment, and their lines are lost and counted as well.
    assert after - before >= 2

"""Runs that really run: two loads sent to a flow served by Prefect itself
(tests/flows/outcome.py), one that completes and one whose flow raises. The service
follows both to their end; the admin API, ``events --run-state`` and ``/metrics`` say
COMPLETED and FAILED, and the freshness counted is the runs' own."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.cli import main
from app.storage.runs import FRESHNESS_BUCKETS, bucket_of
from tests.support.erathos import webhook_body
from tests.support.follow import outcome_routes
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.tokens import ADMIN_TOKEN, TOKEN, auth
from tests.support.waiting import eventually
from tools.localprefect import PrefectServer, ServedFlow

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


async def events_with_run(client: httpx.AsyncClient, state: str) -> list[dict[str, Any]]:
    page = await client.get(f"/events?run_state={state}", headers=auth(ADMIN_TOKEN))
    assert page.status_code == 200, page.text
    found: list[dict[str, Any]] = page.json()["events"]
    return found


async def test_a_completed_and_a_failed_run_read_so_in_the_admin_api_events_and_metrics(
    make_settings: SettingsFactory,
    prefect: PrefectServer,
    outcome_flow: ServedFlow,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(
        prefect_api_url=prefect.api_url,
        routes_file=outcome_routes(tmp_path / "routes.json"),
        admin_token=ADMIN_TOKEN,
        follow_interval="0.2s",
    )
    landed = (datetime.now(UTC) - timedelta(minutes=3)).replace(second=0, microsecond=0)
    when = {"finished_at_date": landed.date().isoformat(), "finished_at_time": f"{landed:%H:%M}"}
    good, bad = (
        webhook_body(table_name="orders", **when),
        webhook_body(table_name="broken_refunds", **when),
    )

    async with open_client(settings) as client:
        for body in (good, bad):
            answer = await client.post("/webhooks/erathos", json=body, headers=auth(TOKEN))
            assert answer.status_code == 202, answer.text

        async def both_ended() -> bool:
            ended = [
                *await events_with_run(client, "completed"),
                *await events_with_run(client, "failed"),
            ]
            return len(ended) == 2

        await eventually(both_ended, within=90, what="both runs followed to their end", every=0.5)
        [completed] = await events_with_run(client, "completed")
        [failed] = await events_with_run(client, "failed")
        scraped = samples((await client.get("/metrics")).text)

    assert completed["execution_id"] == good["execution_id"]
    assert failed["execution_id"] == bad["execution_id"]
    assert (completed["run_state"], failed["run_state"]) == ("completed", "failed")
    for event in (completed, failed):
        [delivery] = event["deliveries"]
        assert delivery["state"] == "delivered"
        assert delivery["followed"] is False  # final: no longer asked for
        assert delivery["run_started_at"] is not None
        assert delivery["run_ended_at"] is not None

    # The counters and the histogram: one run each way, measured from the runs' own ends.
    def value(name: str, **labels: str) -> float:
        return scraped.get((f"erathos_bridge_{name}", frozenset(labels.items())), 0.0)

    assert value("runs_finished_total", route="outcome", state="completed") == 1
    assert value("runs_finished_total", route="outcome", state="failed") == 1
    assert value("runs_followed", connection="default") == 0
    for basis, start in (("receipt", "received_at"), ("finish", None)):
        assert value("run_freshness_seconds_count", route="outcome", basis=basis) == 2
        expected = [0] * (len(FRESHNESS_BUCKETS) + 1)
        for event in (completed, failed):
            [delivery] = event["deliveries"]
            ended = datetime.fromisoformat(delivery["run_ended_at"]).timestamp()
            began = (
                datetime.fromisoformat(event[start]).timestamp() if start else landed.timestamp()
            )
            expected[bucket_of(ended - began)] += 1
        for index, bound in enumerate(FRESHNESS_BUCKETS):
            cumulative = value(
                "run_freshness_seconds_bucket", route="outcome", basis=basis, le=str(bound)
            )
            assert cumulative == sum(expected[: index + 1]), (basis, bound)

    # events, from the command line, with nothing but the store.
    monkeypatch.setenv("BRIDGE_DATABASE_URL", settings.database_url)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert await anyio.to_thread.run_sync(main, ["events", "--run-state", "failed", "--json"]) == 0
    [listed] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert listed["execution_id"] == bad["execution_id"]
    assert listed["run_state"] == "failed"
    assert listed["deliveries"][0]["run_state"] == "failed"
    assert await anyio.to_thread.run_sync(main, ["events", "--run-state", "completed"]) == 0
    printed = capsys.readouterr().out
    assert good["execution_id"] in printed
    assert "delivered, run completed" in printed
    assert bad["execution_id"] not in printed

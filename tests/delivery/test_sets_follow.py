"""A set's flow run is followed to its end like a route's: two sets of a served flow
(tests/flows/outcome.py), one whose run completes and one whose flow raises. Each
window's run state reads COMPLETED or FAILED on its event's delivery, in the set's
windows (admin API, console, ``sets``), in ``/metrics`` under the set's route, and its
freshness is counted from the last member's finish."""

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
from tests.support.console import sign_in
from tests.support.follow import OUTCOME_SET_DEPLOYMENT
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.setfiles import closed_window, load, send, set_name, windows, write_routes
from tests.support.tokens import ADMIN_TOKEN, auth
from tests.support.waiting import eventually
from tools.localprefect import PrefectError, PrefectServer, ServedFlow

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def two_sets(path: Path, good: str, bad: str) -> Path:
    """One set whose flow completes and one whose flow raises (a member ``broken...``)."""
    sets = []
    for name, members in (
        (good, ["raw_shop.orders", "raw_shop.customers"]),
        (bad, ["raw_shop.broken_refunds", "raw_shop.payments"]),
    ):
        write_routes(path, name, members, {"within": "2h"}, deployment=OUTCOME_SET_DEPLOYMENT)
        sets += json.loads(path.read_text())["sets"]
    path.write_text(json.dumps({"sets": sets}))
    return path


async def ended_window(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    """The set's closed window, once its run was followed to a final state."""
    await closed_window(client, name, within=30)

    async def run_ended() -> bool:
        [window] = await windows(client, name)
        return window["run_state"] in ("completed", "failed")

    await eventually(run_ended, within=90, what=f"the run of {name} followed to its end")
    [window] = await windows(client, name)
    return window


async def test_a_sets_run_is_followed_to_completed_or_failed_and_shown_everywhere(
    make_settings: SettingsFactory,
    prefect: PrefectServer,
    outcome_flow: ServedFlow,
    tmp_path: Path,
    cli_environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def set_deployment_served() -> bool:
        # serve() creates the flow file's deployments one after the other.
        try:
            prefect.request("GET", f"deployments/name/{OUTCOME_SET_DEPLOYMENT}")
        except PrefectError:
            return False
        return True

    await eventually(set_deployment_served, within=30, what="the set deployment served")
    good, bad = set_name(), set_name()
    settings = make_settings(
        prefect_api_url=prefect.api_url,
        routes_file=two_sets(tmp_path / "routes.json", good, bad),
        admin_token=ADMIN_TOKEN,
        follow_interval="0.2s",
    )
    # The members landed minutes ago: the last one's finish is the set's.
    landed = (datetime.now(UTC) - timedelta(minutes=3)).replace(second=0, microsecond=0)
    last = landed + timedelta(minutes=1)
    bodies = [
        load("orders", finished_at_date=f"{landed:%Y-%m-%d}", finished_at_time=f"{landed:%H:%M}"),
        load("customers", finished_at_date=f"{last:%Y-%m-%d}", finished_at_time=f"{last:%H:%M}"),
        load("broken_refunds"),
        load("payments"),
    ]

    async with open_client(settings) as client:
        for body in bodies:
            await send(client, body)
        completed = await ended_window(client, good)
        failed = await ended_window(client, bad)
        event = await client.get(f"/events/{completed['event_id']}", headers=auth(ADMIN_TOKEN))
        listed = await client.get("/events?run_state=failed", headers=auth(ADMIN_TOKEN))
        scraped = (await client.get("/metrics")).text
        await sign_in(client)
        page = (await client.get("/ui/sets")).text

    assert (completed["state"], completed["run_state"]) == ("completed", "completed")
    assert (failed["state"], failed["run_state"]) == ("completed", "failed")
    [delivery] = event.json()["deliveries"]
    assert delivery["route"] == f"set:{good}"
    assert delivery["run_state"] == "completed"
    assert delivery["followed"] is False  # final: no longer asked for
    assert delivery["run_started_at"] is not None
    assert delivery["run_ended_at"] is not None
    assert [e["id"] for e in listed.json()["events"]] == [failed["event_id"]]

    found = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(scraped)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return found.get((f"erathos_bridge_{name}", frozenset(labels.items())), 0.0)

    assert value("runs_finished_total", route=f"set:{good}", state="completed") == 1
    assert value("runs_finished_total", route=f"set:{good}", state="failed") == 0
    assert value("runs_finished_total", route=f"set:{bad}", state="failed") == 1
    for basis in ("receipt", "finish"):
        assert value("run_freshness_seconds_count", route=f"set:{good}", basis=basis) == 1
    # Measured from the last member's finish (to the minute, as Erathos sends it).
    ended = datetime.fromisoformat(delivery["run_ended_at"])
    expected = bucket_of((ended - last).total_seconds())
    for index, bound in enumerate(FRESHNESS_BUCKETS):
        cumulative = value(
            "run_freshness_seconds_bucket", route=f"set:{good}", basis="finish", le=str(bound)
        )
        assert cumulative == (1 if index >= expected else 0), bound

    assert "run completed" in page
    assert "run failed" in page

    # sets, from the command line, with nothing but the store.
    cli_environment.setenv("BRIDGE_DATABASE_URL", settings.database_url)
    cli_environment.setenv("BRIDGE_ROUTES_FILE", str(settings.routes_file))
    cli_environment.setenv("PREFECT_API_URL", prefect.api_url)
    capsys.readouterr()
    assert await anyio.to_thread.run_sync(main, ["sets", "--json"]) == 0
    shown = {x["set"]: x for x in map(json.loads, capsys.readouterr().out.splitlines())}
    assert shown[good]["last_closed"]["run_state"] == "completed"
    assert shown[bad]["last_closed"]["run_state"] == "failed"
    assert shown[bad]["window"] is None  # nothing open: the next member's load opens one
    assert await anyio.to_thread.run_sync(main, ["sets"]) == 0
    printed = capsys.readouterr().out
    assert f"last window {completed['window']}  complete, run completed" in printed
    assert f"last window {failed['window']}  complete, run failed" in printed

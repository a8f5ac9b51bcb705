"""Flow runs in the console, in a real browser (as tests/console/test_console_browser.py):
the service as its own process sends two loads to a flow Prefect serves, one that
completes and one whose flow raises, and follows both to their end. The events page shows
each run's state and filters the loads whose run failed; the event page shows the run's
times; the overview, the day's runs by final state and the freshness per route.
Screenshots go to ``test-artifacts/console/``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.console.test_console_browser import DESKTOP, chromium, run_aside, screenshot, sign_in
from tests.support.erathos import webhook_body
from tests.support.follow import outcome_routes
from tests.support.processes import ServiceProcess, clean_environment
from tests.support.tokens import ADMIN_TOKEN, TOKEN, auth
from tests.support.waiting import delivered, eventually
from tools.localprefect import PrefectServer, ServedFlow, free_port

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Followed:
    service: ServiceProcess
    completed: str  # event ids
    failed: str


def follow_environment(prefect: PrefectServer, work: Path) -> dict[str, str]:
    return clean_environment(
        PREFECT_API_URL=prefect.api_url,
        BRIDGE_ROUTES_FILE=str(outcome_routes(work / "routes.json")),
        BRIDGE_WEBHOOK_TOKEN=TOKEN,
        BRIDGE_ADMIN_TOKEN=ADMIN_TOKEN,
        BRIDGE_PORT=str(free_port()),
        BRIDGE_DATABASE_URL=f"sqlite:///{work / 'bridge.db'}",
        BRIDGE_FOLLOW_INTERVAL="300ms",
        BRIDGE_LOG_FORMAT="json",
    )


@pytest.fixture(scope="module")
def followed(
    prefect: PrefectServer, outcome_flow: ServedFlow, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Followed]:
    work = tmp_path_factory.mktemp("console-runs")
    service = ServiceProcess(follow_environment(prefect, work), work, work / "service.log")
    service.start()
    try:
        ids = []
        landed = datetime.now(UTC) - timedelta(minutes=2)
        when = {"finished_at_date": f"{landed:%Y-%m-%d}", "finished_at_time": f"{landed:%H:%M}"}
        with httpx.Client(base_url=service.url, timeout=10) as client:
            for table in ("orders", "broken_refunds"):
                body = webhook_body(table_name=table, **when)
                answer = client.post("/webhooks/erathos", json=body, headers=auth()).json()
                assert answer["status"] in ("delivered", "queued"), answer
                ids.append(answer["event_id"])
        for event_id in ids:
            run_aside(delivered(service.url, event_id))
        run_aside(both_ended(service.url, len(ids)))
        yield Followed(service, *ids)
    finally:
        service.stop()


async def both_ended(url: str, runs: int) -> None:
    """Until the admin API has every run in a final state (the service follows them)."""
    async with httpx.AsyncClient(base_url=url, headers=auth(ADMIN_TOKEN)) as client:

        async def ended() -> bool:
            found = 0
            for state in ("completed", "failed"):
                page = (await client.get(f"/events?run_state={state}")).json()
                found += len(page["events"])
            return found == runs

        await eventually(ended, within=90, what="the runs followed to their end", every=0.3)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium())
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, followed: Followed) -> Iterator[Page]:
    context = browser.new_context(base_url=followed.service.url, viewport=DESKTOP)
    try:
        yield context.new_page()
    finally:
        context.close()


def test_the_run_badges_the_failed_filter_the_event_page_and_the_overview(
    page: Page, followed: Followed
) -> None:
    sign_in(page)
    page.goto("/ui/events?run=failed")

    # The failed filter: the load whose run failed, and not the other.
    expect(page.locator("table.events tbody tr")).to_have_count(1)
    row = page.locator("table.events tbody tr")
    expect(row.locator(".badge.run").first).to_have_text("run failed")
    expect(row.locator(".badge").first).to_have_text("delivered")  # Prefect made the run
    screenshot(page, "runs-failed-filter")

    page.goto("/ui/events")
    completed = page.locator("tr", has=page.locator(f'a[href$="/events/{followed.completed}"]'))
    expect(completed.locator(".badge.run").first).to_have_text("run completed")
    screenshot(page, "runs-events")

    page.goto(f"/ui/events/{followed.failed}")
    expect(page.locator("h1 .badge.run")).to_have_text("run failed")
    facts = page.locator(".delivery .facts")
    expect(facts).to_contain_text("run started")
    expect(facts).to_contain_text("run ended")
    screenshot(page, "runs-event")

    page.goto("/ui/")
    expect(page.locator(".count.r-completed strong")).to_have_text("1")
    expect(page.locator(".count.r-failed strong")).to_have_text("1")
    route = page.locator("table.freshness tbody tr", has=page.locator("text=outcome"))
    expect(route.locator("td").nth(1)).to_have_text("2")  # both runs ended
    for column in (2, 3, 4, 5):  # p50 and p95, from Erathos's finish and from receipt
        expect(route.locator("td").nth(column)).to_have_text(re.compile(r"^\d+(\.\d)? (s|min)$"))
    screenshot(page, "runs-overview")

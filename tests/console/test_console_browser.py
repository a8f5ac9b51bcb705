"""The console in a real browser, as an operator uses it: headless Chromium from the
system's packages (never a downloaded browser), driven by Playwright, against the service
as its own process and a real Prefect server with its UI.

Each test writes screenshots of the pages it sees to ``test-artifacts/console/``.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright

from app.config import Settings
from tests.support.erathos import webhook_body
from tests.support.inprocess import open_client
from tests.support.paths import ROOT
from tests.support.processes import ServiceProcess, fast_service_environment
from tests.support.tokens import ADMIN_TOKEN, TOKEN, auth
from tests.support.waiting import delivered
from tools.localprefect import PrefectServer

pytestmark = pytest.mark.slow

ARTIFACTS = ROOT / "test-artifacts" / "console"
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}
# Dead letters, one per test that needs its own (a replay changes what the others see).
DEAD_TABLES = ("refunds", "invoices", "credits")
T = TypeVar("T")


@dataclass(frozen=True)
class Stored:
    event_id: str
    execution_id: str
    delivery_id: str


@dataclass(frozen=True)
class Console:
    service: ServiceProcess
    prefect: PrefectServer
    flow_id: str
    delivered: Stored
    dead: dict[str, Stored]


def chromium() -> str:
    """Debian's Chromium (``apt-get install chromium``; .ci/run installs it in CI)."""
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("no chromium on PATH: apt-get install chromium (.ci/run does it in CI)")
    return found


def run_aside(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end in an event loop on a thread of its own: Playwright's
    synchronous API keeps a loop running on this one."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, work).result()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


@pytest.fixture(scope="module")
def prefect_ui() -> Iterator[PrefectServer]:
    """A Prefect server with its UI, where the console's flow run links lead."""
    server = PrefectServer.launch(ui=True, wait=120)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def console(
    prefect_ui: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Console]:
    """The service as its own process, on a store that holds dead letters (sent while
    the flow id was one Prefect does not know: HTTP 409) and one delivered event."""
    work = tmp_path_factory.mktemp("console")
    database_url = f"sqlite:///{work / 'bridge.db'}"
    flow_id = prefect_ui.create_flow(f"console-{uuid.uuid4().hex[:8]}")
    dead = run_aside(dead_letters(prefect_ui.api_url, database_url))
    env = fast_service_environment(prefect_ui.api_url, flow_id, database_url)
    # The pages show each attempt: a Prefect slowed by a busy machine past the 2 s of the
    # fast environment would add a timed-out one.
    env |= {"BRIDGE_PREFECT_TIMEOUT": "10s", "BRIDGE_LEASE": "30s"}
    service = ServiceProcess(env, work, work / "service.log")
    service.start()
    try:
        body = webhook_body(table_name="orders")
        with httpx.Client(base_url=service.url, timeout=10) as client:
            answer = client.post("/webhooks/erathos", json=body, headers=auth()).json()
        assert answer["status"] in ("delivered", "queued"), answer
        run_aside(delivered(service.url, answer["event_id"]))
        stored = Stored(answer["event_id"], body["execution_id"], answer["deliveries"][0]["id"])
        yield Console(service, prefect_ui, flow_id, stored, dead)
    finally:
        service.stop()


async def dead_letters(api_url: str, database_url: str) -> dict[str, Stored]:
    unknown_flow = str(uuid.uuid4())
    settings = Settings(
        _env_file=None,
        _secrets_dir=None,
        webhook_tokens=TOKEN,
        admin_token=ADMIN_TOKEN,
        database_url=database_url,
        prefect_api_url=api_url,
        prefect_flow_id=unknown_flow,
        sync_wait="20s",  # a failure bound: the answer says Prefect's 409 on a busy machine too
    )
    found = {}
    async with open_client(settings) as client:
        for table in DEAD_TABLES:
            body = webhook_body(table_name=table)
            answer = (await client.post("/webhooks/erathos", json=body, headers=auth())).json()
            assert answer["status"] == "failed", answer
            delivery_id = answer["deliveries"][0]["id"]
            found[table] = Stored(answer["event_id"], body["execution_id"], delivery_id)
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium())
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, console: Console) -> Iterator[Page]:
    """A fresh browser profile (no cookie), at desktop width, in São Paulo's zone."""
    context = browser.new_context(
        base_url=console.service.url, viewport=DESKTOP, timezone_id="America/Sao_Paulo"
    )
    try:
        yield context.new_page()
    finally:
        context.close()


def sign_in(page: Page, token: str = ADMIN_TOKEN) -> None:
    page.goto("/ui/")
    expect(page).to_have_url(re.compile(r"/ui/sign-in$"))
    page.fill("#token", token)
    page.click("button[type=submit]")
    assert token not in page.url  # a POST: the token never travels in a URL


def test_signing_in_shows_a_delivered_and_a_dead_event(page: Page, console: Console) -> None:
    sign_in(page)

    expect(page).to_have_url(re.compile(r"/ui/$"))
    expect(page.locator(".count.s-delivered strong")).not_to_have_text("0")
    expect(page.locator(".count.s-dead strong")).not_to_have_text("0")
    expect(page.locator("svg rect.s-dead").first).to_be_visible()
    screenshot(page, "overview")

    page.click("nav >> text=Events")
    delivered = page.locator("tr", has=page.locator(f"text={console.delivered.execution_id}"))
    dead = page.locator("tr", has=page.locator(f"text={console.dead['refunds'].execution_id}"))
    expect(delivered.locator(".badge").first).to_have_text("delivered")
    expect(dead.locator(".badge").first).to_have_text("dead")
    # Each time in UTC, and again in the browser's zone (console.js).
    expect(delivered.locator("time")).to_contain_text("UTC")
    expect(delivered.locator(".local")).to_contain_text("GMT-3")
    screenshot(page, "events")

    page.click("nav >> text=Dead letters")
    expect(page.locator("table.dead")).to_contain_text("refunds")
    screenshot(page, "dead-letters")


def test_an_event_shows_its_fields_attempts_and_links_its_flow_run_in_prefect(
    page: Page, console: Console
) -> None:
    sign_in(page)
    page.goto(f"/ui/events/{console.delivered.event_id}")

    expect(page.locator("table.fields")).to_contain_text("raw_shop")  # as Erathos sent it
    expect(page.locator(".delivery")).to_contain_text(f"flow {console.flow_id}")  # its target
    expect(page.locator(".delivery tbody tr")).to_have_count(1)  # one attempt: 201
    expect(page.locator(".delivery tbody")).to_contain_text("201")
    screenshot(page, "event")
    [run] = console.prefect.flow_runs(console.flow_id)
    link = page.locator("a.flow-run")
    expect(link).to_have_attribute(
        "href", f"http://127.0.0.1:{console.prefect.port}/runs/flow-run/{run['id']}"
    )

    link.click()

    expect(page).to_have_url(re.compile(f"/runs/flow-run/{run['id']}$"))
    expect(page.get_by_text(run["name"]).first).to_be_visible(timeout=30_000)
    screenshot(page, "prefect-flow-run")


def test_a_replayed_dead_letter_is_delivered_by_prefect(page: Page, console: Console) -> None:
    dead = console.dead["invoices"]
    sign_in(page)
    page.goto("/ui/dead")
    page.check(f'input[name="delivery"][value="{dead.delivery_id}"]')

    page.click('button[name="mode"][value="new"]')  # first, what a new run would mean
    expect(page.locator("h1")).to_have_text("Replay as new flow runs?")
    screenshot(page, "confirm-new-run")
    page.click("text=Cancel")
    page.check(f'input[name="delivery"][value="{dead.delivery_id}"]')
    page.click('button[name="mode"][value="same"]')

    expect(page.locator(".notice")).to_contain_text("1 replayed with their idempotency keys")
    run_aside(console.service.settled(within=30))
    page.goto(f"/ui/events/{dead.event_id}")
    # The event's state; beside it, once followed, its run's (a badge of class "run").
    expect(page.locator("h1 .badge:not(.run)")).to_have_text("delivered")
    expect(page.locator(".delivery tbody tr")).to_have_count(2)  # 409, then 201
    screenshot(page, "replayed")
    runs = console.prefect.flow_runs(console.flow_id)
    assert dead.execution_id in {run["idempotency_key"] for run in runs}


def test_a_wrong_token_a_missing_csrf_token_and_a_cross_site_post_are_refused(
    page: Page, console: Console
) -> None:
    dead = console.dead["credits"]
    sign_in(page, token="not-the-admin-token-at-all")
    expect(page.locator(".error")).to_have_text("that is not the admin token")
    assert page.context.cookies() == []
    screenshot(page, "wrong-token")

    page.fill("#token", ADMIN_TOKEN)
    page.click("button[type=submit]")
    page.goto("/ui/dead")
    csrf = page.locator('input[name="csrf"]').first.get_attribute("value")
    page.locator('input[name="csrf"]').evaluate_all(
        "inputs => inputs.forEach(input => input.remove())"
    )
    with page.expect_response("**/ui/replay") as missing:
        page.click(f'button[name="one"][value="{dead.delivery_id}"]')
    assert missing.value.status == 403
    expect(page.locator(".error")).to_contain_text("CSRF token is missing")
    screenshot(page, "refused-csrf")

    # Another site's page posts the same form, even with this session's CSRF token.
    attacker = (
        f'<form method="post" action="{console.service.url}/ui/replay">'
        f'<input type="hidden" name="csrf" value="{csrf}">'
        f'<input type="hidden" name="one" value="{dead.delivery_id}">'
        "<button>Claim your prize</button></form>"
    )
    page.route(
        "http://attacker.test/**",
        lambda route: route.fulfill(content_type="text/html", body=attacker),
    )
    page.goto("http://attacker.test/")
    with page.expect_response("**/ui/replay") as cross_site:
        page.click("text=Claim your prize")
    assert cross_site.value.status == 403
    expect(page.locator(".error")).to_contain_text("another site")
    screenshot(page, "refused-cross-site")

    with httpx.Client(base_url=console.service.url) as client:
        detail = client.get(f"/events/{dead.event_id}", headers=auth(ADMIN_TOKEN)).json()
    assert detail["deliveries"][0]["state"] == "dead"


def test_the_pages_fit_a_phones_width(browser: Browser, console: Console) -> None:
    context = browser.new_context(base_url=console.service.url, viewport=PHONE)
    try:
        page = context.new_page()
        sign_in(page)
        for path, name in (
            ("/ui/", "phone-overview"),
            (f"/ui/events/{console.delivered.event_id}", "phone-event"),
        ):
            page.goto(path)
            # The page itself never scrolls sideways: wide tables scroll in their box.
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], (path, width)
            screenshot(page, name)
    finally:
        context.close()

"""How long the console's pages take with many stored events: stores them straight through
the store (spread over the last day: delivered, dead, pending, ignored), starts the
service on that store, and times each page in headless Chromium.

    .venv/bin/python -m tools.console_load [--events 10000] [--runs 5]

Not a test (no timing is asserted anywhere): it prints, per page, the median of ``runs``
loads: the server's answer (request start to response end) and the whole load (to the
load event). Everything runs on this machine (127.0.0.1); Prefect is never reached.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from playwright.sync_api import Page, sync_playwright

from app.storage.database import Database
from app.storage.records import AttemptRecord, DeliveryState, DeliveryUpdate, NewDelivery, NewEvent
from app.storage.store import Store
from tests.support.processes import ServiceProcess, clean_environment
from tests.support.tokens import ADMIN_TOKEN, TOKEN
from tools.localprefect import free_port

DAY = 86400.0
# What becomes of the stored events, by share: most are delivered, as in a working day.
OUTCOMES = (
    (DeliveryState.DELIVERED, 0.85),
    (DeliveryState.DEAD, 0.05),
    (DeliveryState.PENDING, 0.05),
    (None, 0.05),  # ignored: no delivery
)


async def store_events(url: str, count: int) -> tuple[str, str]:
    """Store ``count`` events received over the last day, each delivery finished as
    ``OUTCOMES`` shares them out, through the store as the dispatcher would; an event id
    and a part of an execution id, to open and to search for."""
    now = time.time()
    moment = [now]  # the store's clock, set before each event
    database = await Database.open(url)
    store = Store(database, clock=lambda: moment[0])
    states = random.choices(  # noqa: S311 (a spread, not a secret)
        [state for state, _ in OUTCOMES], [share for _, share in OUTCOMES], k=count
    )
    received = sorted(now - random.uniform(0, DAY) for _ in range(count))  # noqa: S311
    try:
        for index, (state, at) in enumerate(zip(states, received, strict=True)):
            moment[0] = at
            execution_id = str(uuid.uuid4())
            table = f"table_{index % 40}"
            new = NewEvent(
                execution_id=execution_id,
                payload={"execution_id": execution_id, "table_name": table, "rows": "1520"},
                deliveries=[]
                if state is None
                else [NewDelivery("default", "default", execution_id)],
                job_id=str(uuid.UUID(int=index % 25)),
                schema_name="raw_shop",
                table_name=table,
                status="FINISHED",
                ignored_reason="no route matched" if state is None else None,
            )
            finished = state in (DeliveryState.DELIVERED, DeliveryState.DEAD)
            recorded = await store.record_event(
                new, claim_for="load" if finished else None, lease_seconds=60
            )
            assert recorded is not None
            if finished and state is not None:
                [delivery] = recorded.deliveries
                moment[0] = at + 0.2
                attempt, update = ending(delivery.id, state, moment[0])
                assert await store.complete_attempt(attempt, update, "load")
        return recorded.event.id, recorded.event.execution_id[9:18]
    finally:
        await database.close()


def ending(
    delivery_id: str, state: DeliveryState, at: float
) -> tuple[AttemptRecord, DeliveryUpdate]:
    """The one attempt that delivered (201) or dead-lettered (409) a delivery."""
    if state is DeliveryState.DELIVERED:
        run = str(uuid.uuid4())
        update = DeliveryUpdate(
            state,
            201,
            None,
            flow_run_id=run,
            flow_run_url=f"http://127.0.0.1:4200/runs/flow-run/{run}",
            finished_at=at,
        )
        outcome, error = "delivered", None
    else:
        error = "HTTP 409: Data integrity conflict"
        update = DeliveryUpdate(state, 409, error, finished_at=at)
        outcome = "permanent"
    attempt = AttemptRecord(
        0, delivery_id, 1, at, 80.0, outcome, update.last_status_code, error, None, None
    )
    return attempt, update


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools.console_load", description=__doc__)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--screenshot", type=Path, help="write the overview's screenshot here")
    options = parser.parse_args(argv)
    chromium = shutil.which("chromium")
    if chromium is None:
        print("no chromium on PATH: apt-get install chromium", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="console-load-"))
    url = f"sqlite:///{work / 'bridge.db'}"
    started = time.monotonic()
    event_id, part = asyncio.run(store_events(url, options.events))
    print(f"stored {options.events} events in {time.monotonic() - started:.1f} s ({url})")
    service = ServiceProcess(
        clean_environment(
            PREFECT_API_URL="http://127.0.0.1:9/api",  # nothing listens: pending stays pending
            PREFECT_FLOW_ID=str(uuid.uuid4()),
            BRIDGE_WEBHOOK_TOKEN=TOKEN,
            BRIDGE_ADMIN_TOKEN=ADMIN_TOKEN,
            BRIDGE_PORT=str(free_port()),
            BRIDGE_DATABASE_URL=url,
            BRIDGE_LOG_LEVEL="WARNING",
        ),
        work,
        work / "service.log",
    )
    service.spawn()
    try:
        wait_alive(service.url)
        pages = {
            "overview": "/ui/",
            "events": "/ui/events",
            "events, dead": "/ui/events?state=dead",
            "events, delivered": "/ui/events?state=delivered",
            "events, text search": f"/ui/events?q={part}",
            "events, page 2": None,  # the "Older" link of the first page
            "event": f"/ui/events/{event_id}",
            "dead letters": "/ui/dead",
        }
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium)
            page = browser.new_page(base_url=service.url, viewport={"width": 1280, "height": 900})
            page.goto("/ui/sign-in")
            page.fill("#token", ADMIN_TOKEN)
            page.click("button[type=submit]")
            print(f"\n{'page':<22}{'server (ms)':>14}{'load (ms)':>12}")
            for name, path in pages.items():
                if path is None:
                    page.goto("/ui/events")
                    href = page.locator("a[rel=next]").get_attribute("href")
                    assert href is not None
                    path = href
                server, load = time_page(page, path, options.runs)
                print(f"{name:<22}{server:>14.0f}{load:>12.0f}")
            if options.screenshot is not None:
                page.goto("/ui/")
                page.screenshot(path=options.screenshot)  # what fits 1280 x 900
            browser.close()
    finally:
        service.stop()
    return 0


def time_page(page: Page, path: str, runs: int) -> tuple[float, float]:
    """Median server time and whole load time of ``runs`` loads, from Navigation Timing."""
    server, load = [], []
    for _ in range(runs):
        response = page.goto(path, wait_until="load")
        if response is None or response.status != 200:
            raise SystemExit(f"{path}: {response.status if response else 'no answer'}")
        timing = page.evaluate(
            "(() => { const t = performance.getEntriesByType('navigation')[0];"
            " return [t.responseEnd - t.requestStart, t.loadEventEnd - t.startTime]; })()"
        )
        server.append(timing[0])
        load.append(timing[1])
    return statistics.median(server), statistics.median(load)


def wait_alive(base_url: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the service did not answer at {base_url} within {within:.0f} s")


if __name__ == "__main__":
    sys.exit(main())

"""Waiting in tests: for a condition (never a fixed sleep where an outcome can be
awaited), for a service's deliveries to settle, and a clock moved by hand (never a sleep
for a lease or a backoff)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tests.support.tokens import ADMIN_TOKEN, auth


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    within: float,
    what: str,
    every: float = 0.1,
) -> None:
    """Return once ``condition()`` (sync or async) is true; fail the test naming ``what``
    when it is not within ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {within} s")
        await asyncio.sleep(every)


async def pending_count(client: httpx.AsyncClient) -> int:
    """How many events still have a pending delivery (up to 500 of each list), by the
    admin API of the service ``client`` talks to (in process, or a real process by its
    URL). An event with one dead delivery reads dead while another is still pending, so
    the dead ones are looked into as well."""
    count = 0
    for state in ("pending", "dead"):
        response = await client.get(
            "/events", params={"state": state, "limit": 500}, headers=auth(ADMIN_TOKEN)
        )
        assert response.status_code == 200, response.text
        for event in response.json()["events"]:
            count += any(d["state"] == "pending" for d in event["deliveries"])
    return count


async def settled(client: httpx.AsyncClient, within: float) -> None:
    """Wait until no event has a pending delivery (each is delivered or dead)."""

    async def none_pending() -> bool:
        return await pending_count(client) == 0

    await eventually(none_pending, within=within, what="every delivery settled")


async def delivered(url: str, event_id: str, within: float = 60) -> dict[str, Any]:
    """Wait until the event is delivered, by the admin API of the service at ``url``;
    the event as that API shows it then. The webhook's own answer says "delivered" only
    when that happened within BRIDGE_SYNC_WAIT; on a busy machine, or when the local
    Prefect answered 503 to a first try, it says "queued" and the retry delivers it a
    moment later."""
    async with httpx.AsyncClient(base_url=url) as client:
        return await delivered_by(client, event_id, within)


async def delivered_by(
    client: httpx.AsyncClient, event_id: str, within: float = 60
) -> dict[str, Any]:
    """:func:`delivered`, through ``client`` (an in-process one, say): the event once
    it is delivered, as the admin API shows it."""
    shown: dict[str, Any] = {}

    async def done() -> bool:
        answer = await client.get(f"/events/{event_id}", headers=auth(ADMIN_TOKEN))
        assert answer.status_code == 200, answer.text
        shown.update(answer.json())
        assert shown["state"] in ("pending", "delivered"), answer.text
        return bool(shown["state"] == "delivered")

    await eventually(done, within=within, what=f"event {event_id} delivered", every=0.2)
    return shown


class ManualClock:
    """A clock that moves only when told: call it for epoch seconds (the store's clock),
    or ``monotonic()`` (the gate's)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

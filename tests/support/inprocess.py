"""The app under test in process: settings built for a test, the app with its lifespan
running behind an in-process client, and what it stored."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import httpx
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.main import create_app
from app.storage.database import Database
from app.storage.history import History
from app.storage.records import DeliveryRecord, EventRecord

SettingsFactory = Callable[..., Settings]


class TargetSettings(Protocol):
    """Settings aimed at one Prefect API and flow, with a test's own overrides on top (the
    ``fast_retries`` and ``events_on`` fixtures)."""

    def __call__(self, api_url: str, flow_id: str, **more: Any) -> Settings: ...


class GuardedSettings(Protocol):
    """Settings aimed at the guarded Prefect server and this test's flow on it, sending
    ``auth_string`` (the ``guarded_settings`` fixture)."""

    def __call__(self, auth_string: str, **more: Any) -> Settings: ...


@asynccontextmanager
async def open_client(
    settings: Settings, clock: Callable[[], float] = time.time
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, and a client that talks to it in-process;
    ``clock``: the store's and the dispatcher's (a test moves it by hand)."""
    app = create_app(settings, clock=clock)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://bridge"
        ) as client,
    ):
        yield client


async def stored_events(settings: Settings) -> list[tuple[EventRecord, list[DeliveryRecord]]]:
    """Every event the service stored, newest first (read from its database, after it
    stopped or beside it)."""
    database = await Database.open(settings.database_url)
    try:
        return await History(database).list_events(limit=500)
    finally:
        await database.close()

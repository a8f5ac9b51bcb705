"""Shared fixtures: a real Prefect server for the session, the store's database (SQLite,
or a fresh PostgreSQL database), settings built for a test, and the app under test with
its lifespan running.

Tests marked ``every_database`` that use ``database_url`` (directly or through
``make_settings``) run once per store: ``[sqlite]`` and ``[postgresql]``. The
PostgreSQL runs need ``BRIDGE_TEST_DATABASE_URL`` (a server where the tests may create
databases); without it they are skipped, except in CI, where that is an error.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.main import create_app
from app.storage.database import Database
from app.storage.history import History
from app.storage.records import DeliveryRecord, EventRecord
from app.storage.store import Store
from tests.databases import (
    BACKENDS,
    SERVER_VARIABLE,
    configured_server,
    create_database,
    drop_database,
)
from tests.tokens import ADMIN_TOKEN as ADMIN_TOKEN
from tests.tokens import TOKEN as TOKEN
from tests.tokens import auth as auth
from tests.waiting import ManualClock
from tools.localprefect import PrefectServer

SettingsFactory = Callable[..., Settings]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The guarded Prefect server is a second Prefect process, started for these tests alone:
    # they belong with the slow ones, out of the fast loop.
    for item in items:
        if "guarded_prefect" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database_url" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "every_database"
    ):
        metafunc.parametrize("database_url", BACKENDS, indirect=True)


def postgres_server() -> str:
    """The server of ``BRIDGE_TEST_DATABASE_URL``; skips the test when it is not set (and
    fails it in CI, where a skipped PostgreSQL run would hide that it never ran)."""
    server = configured_server()
    if server is None:
        message = f"{SERVER_VARIABLE} is not set: no PostgreSQL to test against"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return server


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database of this test's own, dropped afterwards."""
    server = postgres_server()
    url = create_database(server)
    try:
        yield url
    finally:
        drop_database(server, url)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The store of this test: a fresh SQLite file, unless the test is parametrised
    (``every_database``) and this is its ``postgresql`` run."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield f"sqlite:///{tmp_path / 'bridge.db'}"
        return
    yield request.getfixturevalue("postgres_url")


@pytest.fixture
def clock() -> ManualClock:
    """The store's clock, moved by hand: no test waits for a lease or a backoff."""
    return ManualClock()


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """This test's database, its schema created, closed afterwards."""
    opened = await Database.open(database_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def store(database: Database, clock: ManualClock) -> Store:
    """The queries of one event's path, on this test's database and clock."""
    return Store(database, clock)


@pytest.fixture
def history(database: Database, clock: ManualClock) -> History:
    """The operators' queries, on the same database and clock as ``store``."""
    return History(database, clock)


@pytest.fixture
def cli_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """For the CLI, which reads the environment: only what a test sets (no developer
    PREFECT_*/BRIDGE_* variable, no .env, an empty secrets directory), a webhook token,
    a fresh SQLite file and JSON logs."""
    for name in list(os.environ):
        if name.startswith(("PREFECT_", "BRIDGE_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secrets").mkdir()
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", str(tmp_path / "secrets"))
    monkeypatch.setenv("BRIDGE_WEBHOOK_TOKEN", TOKEN)
    monkeypatch.setenv("BRIDGE_DATABASE_URL", f"sqlite:///{tmp_path / 'bridge.db'}")
    monkeypatch.setenv("BRIDGE_LOG_FORMAT", "json")
    return monkeypatch


@pytest.fixture(scope="session")
def prefect() -> Iterator[PrefectServer]:
    """One real Prefect server (SQLite, no auth) for the whole test session."""
    server = PrefectServer.launch()
    try:
        yield server
    finally:
        server.stop()


# The guarded Prefect server: Basic auth on, under a Prefect Cloud-shaped API path.
ACCOUNT = "0f6a9b9e-3a8c-4c43-9a57-1d0c5c0b6a11"
WORKSPACE = "7c2d4e1f-5b6a-4f8e-8d9c-2a1b3c4d5e6f"
AUTH_STRING = "admin:correct-horse-battery"


@pytest.fixture(scope="session")
def guarded_prefect() -> Iterator[PrefectServer]:
    """A second real Prefect server, for the tests of credentials: Basic auth on
    (``AUTH_STRING``), its API under a Prefect Cloud-shaped path. Tests that use it are
    marked slow."""
    server = PrefectServer.launch(
        base_path=f"/api/accounts/{ACCOUNT}/workspaces/{WORKSPACE}", auth_string=AUTH_STRING
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prefect_with_services() -> Iterator[PrefectServer]:
    """A real Prefect server with its services running (event persister, triggers and
    actions): events can be read back and automations act on them."""
    server = PrefectServer.launch(services=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def flow_id(prefect: PrefectServer) -> str:
    """A flow of its own for each test, so runs never mix between tests."""
    return prefect.create_flow(f"dbt-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def make_settings(database_url: str) -> SettingsFactory:
    """Settings that ignore the developer's environment and .env, with a fresh database
    (SQLite at ``tmp_path / "bridge.db"``, or this test's PostgreSQL database)."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "webhook_tokens": TOKEN,
            "database_url": database_url,
            "prefect_api_url": "http://127.0.0.1:9/api",
            "prefect_flow_id": str(uuid.uuid4()),
            "poll_interval": "0.1s",
        }
        values.update(overrides)
        return Settings(_env_file=None, _secrets_dir=None, **values)

    return build


@pytest.fixture
def settings(make_settings: SettingsFactory, prefect: PrefectServer, flow_id: str) -> Settings:
    """Settings pointing at the real Prefect server and this test's flow."""
    return make_settings(prefect_api_url=prefect.api_url, prefect_flow_id=flow_id)


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


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with open_client(settings) as c:
        yield c


async def stored_events(settings: Settings) -> list[tuple[EventRecord, list[DeliveryRecord]]]:
    """Every event the service stored, newest first (read from its database, after it
    stopped or beside it)."""
    database = await Database.open(settings.database_url)
    try:
        return await History(database).list_events(limit=500)
    finally:
        await database.close()

"""Shared fixtures, and only fixtures (the helpers they use are tests/support/'s): the
real Prefect servers for the session, the store's database (SQLite, or a fresh PostgreSQL
database), settings built for a test (``make_settings`` and its presets ``fast_retries``,
``events_on`` and ``guarded_settings``), and the app under test with its lifespan running.

Tests marked ``every_database`` that use ``database_url`` (directly or through
``make_settings``) run once per store: ``[sqlite]`` and ``[postgresql]``. The
PostgreSQL runs need ``BRIDGE_TEST_DATABASE_URL`` (a server where the tests may create
databases); without it they are skipped, except in CI, where that is an error.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.storage.database import Database
from app.storage.history import History
from app.storage.store import Store
from tests.support.databases import BACKENDS, create_database, drop_database, postgres_server
from tests.support.follow import OUTCOME_DEPLOYMENT, OUTCOME_FLOW
from tests.support.guarded import AUTH_STRING, BASE_PATH
from tests.support.inprocess import (
    GuardedSettings,
    SettingsFactory,
    TargetSettings,
    open_client,
)
from tests.support.tokens import ADMIN_TOKEN, TOKEN
from tests.support.waiting import ManualClock
from tools.localprefect import PrefectServer, ServedFlow


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


@pytest.fixture(scope="session")
def guarded_prefect() -> Iterator[PrefectServer]:
    """A second real Prefect server, for the tests of credentials: Basic auth on
    (``AUTH_STRING``), its API under a Prefect Cloud-shaped path. Tests that use it are
    marked slow."""
    server = PrefectServer.launch(base_path=BASE_PATH, auth_string=AUTH_STRING)
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
            # A failure bound, not a speed target: the webhook's answer waits for the
            # first attempt even when a busy machine makes Prefect take seconds (a test
            # that wants "queued" sets a short one).
            "sync_wait": "20s",
        }
        values.update(overrides)
        return Settings(_env_file=None, _secrets_dir=None, **values)

    return build


@pytest.fixture
def settings(make_settings: SettingsFactory, prefect: PrefectServer, flow_id: str) -> Settings:
    """Settings pointing at the real Prefect server and this test's flow."""
    return make_settings(prefect_api_url=prefect.api_url, prefect_flow_id=flow_id)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with open_client(settings) as c:
        yield c


@pytest.fixture
def fast_retries(make_settings: SettingsFactory) -> TargetSettings:
    """Settings for deliveries that fail and are tried again within a test: a short
    backoff, a webhook that waits for the outcome, the admin API on. Prefect's timeout
    stays a failure bound (a real Prefect on a busy machine may take over a second to
    make a run, which a short timeout would turn into one attempt more); a test of
    timeouts sets its own, with a lease above it."""

    def build(api_url: str, flow_id: str, **more: Any) -> Settings:
        values: dict[str, Any] = {
            "prefect_api_url": api_url,
            "prefect_flow_id": flow_id,
            "admin_token": ADMIN_TOKEN,
            "prefect_timeout": "10s",
            "lease": "30s",
            "retry_base": "100ms",
            "retry_cap": "1s",
        }
        return make_settings(**(values | more))

    return build


@pytest.fixture
def events_on(make_settings: SettingsFactory) -> TargetSettings:
    """Settings that emit every Erathos event as a Prefect event, with a short backoff, a
    webhook that waits for the outcome, the admin API on."""

    def build(api_url: str, flow_id: str, **more: Any) -> Settings:
        values: dict[str, Any] = {
            "prefect_api_url": api_url,
            "prefect_flow_id": flow_id,
            "prefect_events": True,
            "admin_token": ADMIN_TOKEN,
            "retry_base": "100ms",
            "retry_cap": "1s",
        }
        return make_settings(**(values | more))

    return build


@pytest.fixture
def guarded_flow_id(guarded_prefect: PrefectServer) -> str:
    """A flow of this test's own on the guarded Prefect server."""
    return guarded_prefect.create_flow(f"dbt-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def guarded_settings(
    make_settings: SettingsFactory, guarded_prefect: PrefectServer, guarded_flow_id: str
) -> GuardedSettings:
    """Settings aimed at the guarded Prefect server and ``guarded_flow_id``, the admin API
    on, sending the credentials a test names (``AUTH_STRING`` is the right one)."""

    def build(auth_string: str, **more: Any) -> Settings:
        values: dict[str, Any] = {
            "prefect_api_url": guarded_prefect.api_url,
            "prefect_flow_id": guarded_flow_id,
            "prefect_api_auth_string": auth_string,
            "admin_token": ADMIN_TOKEN,
        }
        return make_settings(**(values | more))

    return build


@pytest.fixture(scope="module")
def outcome_flow(
    prefect: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedFlow]:
    """tests/flows/outcome.py served by Prefect itself: its runs complete, or fail for a
    table named ``broken...``."""
    home = tmp_path_factory.mktemp("outcome-flow")
    served = ServedFlow(
        prefect,
        path=OUTCOME_FLOW,
        deployment=OUTCOME_DEPLOYMENT,
        home=home,
        log_path=home / "flow.log",
    )
    served.start()
    try:
        yield served
    finally:
        served.stop()

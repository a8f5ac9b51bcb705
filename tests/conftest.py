"""Shared fixtures: a real Prefect server for the session, settings built for a test,
and the app under test with its lifespan running."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.main import create_app
from app.settings import Settings
from tools.localprefect import PrefectServer

TOKEN = "test-webhook-token-0123456789"
ADMIN_TOKEN = "test-admin-token-0123456789"

SettingsFactory = Callable[..., Settings]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def prefect() -> Iterator[PrefectServer]:
    """One real Prefect server (SQLite, no auth) for the whole test session."""
    server = PrefectServer.launch()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def flow_id(prefect: PrefectServer) -> str:
    """A flow of its own for each test, so runs never mix between tests."""
    return prefect.create_flow(f"dbt-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings that ignore the developer's environment and .env, with a fresh database."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "webhook_tokens": TOKEN,
            "database_url": f"sqlite:///{tmp_path / 'bridge.db'}",
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
async def open_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, and a client that talks to it in-process."""
    app = create_app(settings)
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


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}

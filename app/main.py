"""The app factory: ``create_app(settings)`` builds the FastAPI app; its lifespan owns
every resource (store, Prefect clients, dispatcher) through :func:`open_bridge`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI

from app import __version__
from app.admin import admin
from app.dropin import dropin_router
from app.errors import install_error_handlers
from app.health import health
from app.logs import RequestContext
from app.prefect import Health
from app.service import Bridge, open_bridge
from app.settings import Settings
from app.webhook import webhooks


class State(TypedDict):
    bridge: Bridge
    health_cache: dict[str, tuple[float, Health]]


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        async with open_bridge(settings) as bridge:
            yield {"bridge": bridge, "health_cache": {}}

    app = FastAPI(
        title="erathos-prefect-bridge",
        version=__version__,
        summary="Erathos job-completion webhooks in, Prefect flow runs out: durably, exactly once.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(RequestContext)
    app.include_router(webhooks)
    app.include_router(health)
    if settings.dropin:
        # Prefect-shaped endpoints (off by default) forward to the environment's connection.
        app.include_router(dropin_router(settings.dropin_allow_fields))
    if settings.admin_token is not None:
        # Without an admin token the admin endpoints do not exist at all.
        app.include_router(admin)
    return app

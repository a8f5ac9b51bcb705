"""The running service's resources, opened and closed in one place.

``open_bridge`` is what the app's lifespan (and the CLI) enter: the database, one
Prefect client per connection, the router, the dispatcher and the start-up probe of
Prefect. Nothing here runs at import time. Routes reach the running :class:`Bridge`
through :data:`BridgeDep`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from app.database import Database
from app.dispatcher import Dispatcher
from app.gate import Circuit
from app.history import History
from app.limits import RateLimiter
from app.logs import configured_secrets
from app.masking import Masker
from app.metrics import Metrics
from app.prefect import PrefectConnection
from app.probe import PrefectWatch
from app.routes import DEFAULT_CONNECTION, Router, default_router
from app.routes_file import ConnectionSpec, Routing, default_connection_spec, load_routes_file
from app.settings import PrefectSettings, Settings, StoreSettings
from app.store import Store
from app.templates import Lookup, template_lookup


@dataclass
class Bridge:
    settings: Settings
    store: Store
    history: History
    router: Router
    connections: dict[str, PrefectConnection]
    lookup: Lookup
    dispatcher: Dispatcher
    limiter: RateLimiter | None = None
    metrics: Metrics = field(default_factory=Metrics)
    # What Prefect says of each connection and target (the start-up probe, /readyz).
    prefect: PrefectWatch = field(kw_only=True)
    # Every configured secret, masked in every form: what the admin API and the console
    # show, and (each connection's) Prefect's answers as they are kept.
    masker: Masker = field(kw_only=True)


async def bridge_of(request: Request) -> Bridge:
    """The running service, from the lifespan's state."""
    bridge: Bridge = request.state.bridge
    return bridge


BridgeDep = Annotated[Bridge, Depends(bridge_of)]


def configure(settings: Settings) -> tuple[Routing, Lookup]:
    """The routes and connections the settings describe; raises ConfigurationError or
    TemplateError (both name the setting) before anything is opened."""
    lookup = template_lookup(settings)
    if settings.routes_file is not None:
        return load_routes_file(settings.routes_file, settings, lookup), lookup
    spec = default_connection_spec(settings)
    assert spec is not None  # guaranteed by Settings validation without a routes file
    return Routing(default_router(settings, lookup), {DEFAULT_CONNECTION: spec}), lookup


def connect(
    spec: ConnectionSpec, settings: PrefectSettings, masker: Masker | None = None
) -> PrefectConnection:
    """The connection's client; ``masker`` masks what it keeps of Prefect's answers (by
    default, its own credentials)."""
    return PrefectConnection(
        spec.name,
        spec.api_url,
        api_version=spec.api_version,
        ui_url=spec.ui_url,
        api_key=spec.api_key,
        auth_string=spec.auth_string,
        timeout=settings.prefect_timeout.total_seconds(),
        masker=masker,
    )


def shutdown_budget(settings: Settings) -> tuple[float, float]:
    """How BRIDGE_SHUTDOWN_GRACE, the whole time from SIGTERM to exit, is spent: first the
    HTTP requests in flight finish (a webhook waits at most BRIDGE_SYNC_WAIT for Prefect),
    then the deliveries in flight get the rest before they are given back."""
    grace = settings.shutdown_grace.total_seconds()
    requests = min(settings.sync_wait.total_seconds() + 1.0, grace / 2)
    return requests, grace - requests


async def open_database(settings: StoreSettings) -> Database:
    """The store the settings name, its schema created or upgraded."""
    return await Database.open(
        settings.database_url,
        settings.durability,
        lock_timeout=settings.db_lock_timeout.total_seconds(),
        pool_size=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout.total_seconds(),
        read_timeout=settings.db_read_timeout.total_seconds(),
    )


@asynccontextmanager
async def open_bridge(settings: Settings, *, dispatch: bool = True) -> AsyncIterator[Bridge]:
    """Open every resource; with ``dispatch`` the dispatcher runs until the block exits,
    and Prefect is probed once in the background (what is wrong is logged as a warning).
    Whoever serves logs that the service is ready, once it listens."""
    routing, lookup = configure(settings)
    router = routing.router
    masker = Masker(configured_secrets(settings, routing.connections.values()))
    async with AsyncExitStack() as stack:
        database = await open_database(settings)
        stack.push_async_callback(database.close)
        store, history = Store(database), History(database)
        connections = {}
        for name, spec in routing.connections.items():
            connection = connect(spec, settings, masker)
            connections[name] = await stack.enter_async_context(connection)
        # Its own registry per service: several apps in one process never share series.
        metrics = Metrics(connections, router.emit_on)
        dispatcher = Dispatcher(store, history, router, connections, lookup, settings, metrics)
        watch = PrefectWatch(router, connections)
        stack.push_async_callback(watch.close)
        if dispatch:
            await dispatcher.start()
            _, deliveries_grace = shutdown_budget(settings)
            stack.push_async_callback(dispatcher.stop, deliveries_grace)
            # A connection whose circuit has opened already is being probed by its gate.
            gates = dispatcher.gates
            watch.start(skip=lambda name: gates[name].circuit is not Circuit.CLOSED)
        limiter = None
        if settings.rate_limit is not None:
            limiter = RateLimiter(settings.rate_limit, burst=max(1.0, 2 * settings.rate_limit))
        yield Bridge(
            settings,
            store,
            history,
            router,
            connections,
            lookup,
            dispatcher,
            limiter,
            metrics,
            prefect=watch,
            masker=masker,
        )

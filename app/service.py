"""The running service's resources, opened and closed in one place.

``open_bridge`` is what the app's lifespan (and the CLI) enter: the database, one
Prefect client per connection, the router, the dispatcher and the start-up probe of
Prefect. Nothing here runs at import time. Routes reach the running :class:`Bridge`
through :data:`BridgeDep`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

import structlog
from fastapi import Depends, Request
from pydantic import SecretStr
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from app.config import PrefectSettings, Settings, StoreSettings
from app.delivery.client import PrefectConnection
from app.delivery.deadlines import Deadlines
from app.delivery.dispatcher import Dispatcher
from app.delivery.follow import Follower, FollowPolicy
from app.delivery.gate import Circuit
from app.delivery.probe import PrefectWatch
from app.errors import StoreUnavailable
from app.masking import Masker
from app.metrics import Metrics
from app.routing.router import DEFAULT_CONNECTION, Router, default_router
from app.routing.routes_file import (
    ConnectionSpec,
    Routing,
    default_connection_spec,
    load_routes_file,
)
from app.routing.templates import Lookup, template_lookup
from app.server.limits import RateLimiter
from app.storage.database import Database
from app.storage.history import History
from app.storage.runs import Runs
from app.storage.set_windows import SetWindows
from app.storage.store import Store

log = structlog.get_logger("erathos_prefect_bridge.service")


@dataclass
class Bridge:
    settings: Settings
    store: Store
    history: History
    router: Router
    connections: dict[str, PrefectConnection]
    lookup: Lookup
    dispatcher: Dispatcher
    limiter: RateLimiter | None
    metrics: Metrics
    # What Prefect says of each connection and target (the start-up probe, /readyz).
    prefect: PrefectWatch = field(kw_only=True)
    # Each flow run's state as followed in Prefect (app.delivery.follow).
    runs: Runs = field(kw_only=True)
    # Every configured secret, masked in every form: what the admin API and the console
    # show, and (each connection's) Prefect's answers as they are kept.
    masker: Masker = field(kw_only=True)
    # The routes file's sets: their windows (what operators read) and their deadlines.
    windows: SetWindows | None = field(default=None, kw_only=True)
    deadlines: Deadlines | None = field(default=None, kw_only=True)


async def bridge_of(request: Request) -> Bridge:
    """The running service, from the lifespan's state."""
    bridge: Bridge = request.state.bridge
    return bridge


BridgeDep = Annotated[Bridge, Depends(bridge_of)]


def configured_secrets(
    settings: StoreSettings, connections: Iterable[ConnectionSpec] = ()
) -> set[str]:
    """Every secret value the service holds: tokens, Prefect credentials and the database
    password (a :class:`app.masking.Masker` masks each in every form it travels in)."""
    found: list[SecretStr] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        values = value if isinstance(value, list) else [value]
        found += [v for v in values if isinstance(v, SecretStr)]
    for spec in connections:
        found += [s for s in (spec.api_key, spec.auth_string) if s is not None]
    secrets = {secret.get_secret_value() for secret in found}
    try:
        password = make_url(settings.database_url).password
    except ArgumentError:
        password = None
    if password:
        secrets.add(str(password))
    return secrets


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
async def open_bridge(
    settings: Settings, *, dispatch: bool = True, clock: Callable[[], float] = time.time
) -> AsyncIterator[Bridge]:
    """Open every resource; with ``dispatch`` the dispatcher (and the sets' deadlines)
    run until the block exits, and Prefect is probed once in the background (what is
    wrong is logged as a warning). Whoever serves logs that the service is ready, once it
    listens. ``clock``: the store's, the dispatcher's and the deadlines' (tests move it)."""
    routing, lookup = configure(settings)
    router = routing.router
    masker = Masker(configured_secrets(settings, routing.connections.values()))
    async with AsyncExitStack() as stack:
        database = await open_database(settings)
        stack.push_async_callback(database.close)
        store, history = Store(database, clock), History(database, clock)
        runs = Runs(database)
        windows = SetWindows(database, clock)
        connections = {}
        for name, spec in routing.connections.items():
            connection = connect(spec, settings, masker)
            connections[name] = await stack.enter_async_context(connection)
        # Its own registry per service: several apps in one process never share series.
        metrics = Metrics(connections, router.emit_on, sets=[s.name for s in router.sets])
        dispatcher = Dispatcher(store, history, router, connections, lookup, settings, metrics)
        watch = PrefectWatch(router, connections)
        stack.push_async_callback(watch.close)
        if dispatch:
            await dispatcher.start()
            _, deliveries_grace = shutdown_budget(settings)
            stack.push_async_callback(dispatcher.stop, deliveries_grace)
            if settings.follow_runs:
                # Beside the dispatcher, never in a delivery's way; stopped before it.
                follower = Follower(
                    runs,
                    connections,
                    dispatcher.status,
                    FollowPolicy.from_settings(settings),
                    metrics,
                    dispatcher.owner,
                    settings.retention.total_seconds(),
                )
                await follower.start()
                stack.push_async_callback(follower.stop)
            else:
                # Runs followed before it was turned off keep their last state; none
                # claims to be followed (the console, the admin API, the gauge). The
                # freshness past BRIDGE_RETENTION goes, as the follower would prune it.
                try:
                    stopped = await runs.stop_following()
                    await runs.prune(clock() - settings.retention.total_seconds())
                except StoreUnavailable as exc:  # a clean-up: never a reason not to start
                    log.warning("could not stop following earlier runs", error=str(exc))
                else:
                    if stopped:
                        log.info("following is off; earlier runs no longer followed", runs=stopped)
            # A connection whose circuit has opened already is being probed by its gate.
            watch.start(skip=lambda name: dispatcher.status()[name].circuit is not Circuit.CLOSED)
        interval = settings.poll_interval.total_seconds()
        retention = settings.retention.total_seconds()
        deadlines = Deadlines(windows, router, interval, metrics, dispatcher.wake, retention)
        if dispatch:
            await deadlines.start()
            stack.push_async_callback(deadlines.stop)
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
            runs=runs,
            masker=masker,
            windows=windows,
            deadlines=deadlines,
        )

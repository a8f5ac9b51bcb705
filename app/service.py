"""The running service's resources, opened and closed in one place.

``open_bridge`` is what the app's lifespan (and the CLI) enter: the store, one
Prefect client per connection, the router and the dispatcher. Nothing here
runs at import time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from app.dispatcher import Dispatcher
from app.prefect import PrefectConnection
from app.routes import DEFAULT_CONNECTION, Router, default_router
from app.settings import Settings, template_lookup
from app.store import Store
from app.templates import Lookup

log = logging.getLogger("erathos_prefect_bridge")


@dataclass
class Bridge:
    settings: Settings
    store: Store
    router: Router
    connections: dict[str, PrefectConnection]
    lookup: Lookup
    dispatcher: Dispatcher


def default_connection(settings: Settings) -> PrefectConnection:
    return PrefectConnection(
        DEFAULT_CONNECTION,
        settings.api_url,
        api_key=settings.prefect_api_key,
        auth_string=settings.prefect_api_auth_string,
        api_version=settings.prefect_api_version,
        timeout=settings.prefect_timeout.total_seconds(),
    )


@asynccontextmanager
async def open_bridge(settings: Settings, *, dispatch: bool = True) -> AsyncIterator[Bridge]:
    """Open every resource; with ``dispatch`` the dispatcher runs until the block exits."""
    lookup = template_lookup(settings)
    router = default_router(settings, lookup)
    async with AsyncExitStack() as stack:
        store = await Store.open(
            settings.database_url,
            settings.durability,
            lock_timeout=settings.db_lock_timeout.total_seconds(),
        )
        stack.push_async_callback(store.close)
        connections = {DEFAULT_CONNECTION: default_connection(settings)}
        for connection in connections.values():
            stack.push_async_callback(connection.aclose)
        dispatcher = Dispatcher(store, router, connections, lookup, settings)
        if dispatch:
            await dispatcher.start()
            stack.push_async_callback(dispatcher.stop, settings.shutdown_grace.total_seconds())
        log.info("service ready", extra={"routes": [r.name for r in router.routes]})
        yield Bridge(settings, store, router, connections, lookup, dispatcher)

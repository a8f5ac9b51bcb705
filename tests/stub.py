"""A real HTTP server on 127.0.0.1 that answers with a handler of the test's: Prefect
Cloud's answers where no real peer can give them (a 429, a garbled header)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from pydantic import SecretStr

from app.prefect import PrefectConnection

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Nothing listens on the discard port: connecting is refused at once.
REFUSED_URL = "http://127.0.0.1:9/api"


@asynccontextmanager
async def stub_server(handler: Handler) -> AsyncIterator[str]:
    """The server's base URL while the block runs."""
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def connection_to(
    api_url: str, *, api_key: SecretStr | None = None, api_version: str = "0.8.4"
) -> AsyncIterator[PrefectConnection]:
    connection = PrefectConnection("main", api_url, api_key=api_key, api_version=api_version)
    try:
        yield connection
    finally:
        await connection.aclose()

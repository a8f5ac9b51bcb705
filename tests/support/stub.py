"""Prefect Cloud's answers where no real peer can give them (a 429, a garbled header, a
redirect): a :class:`PrefectConnection` whose transport is the test's handler, in memory.

``REFUSED_URL`` is a real address where connecting is refused at once: no mock needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import httpx
from pydantic import SecretStr

from app.config import PREFECT_API_VERSION
from app.delivery.client import PrefectConnection

# What answers a request sent through the connection: sync or async, as MockTransport takes.
Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[Any, Any, httpx.Response]]
)
# No real host: the handler answers every request, so nothing is ever resolved.
STUB_API_URL = "https://prefect.invalid/api"
# Nothing listens on the discard port: connecting is refused at once.
REFUSED_URL = "http://127.0.0.1:9/api"


@asynccontextmanager
async def mock_connection(
    handler: Handler,
    *,
    api_url: str = STUB_API_URL,
    api_key: SecretStr | None = None,
    auth_string: SecretStr | None = None,
    request_timeout: float = 10.0,
) -> AsyncIterator[PrefectConnection]:
    """A connection named ``main`` whose every request ``handler`` answers; closed after."""
    async with PrefectConnection(
        "main",
        api_url,
        api_version=PREFECT_API_VERSION,
        api_key=api_key,
        auth_string=auth_string,
        timeout=request_timeout,
        transport=httpx.MockTransport(handler),
    ) as connection:
        yield connection


def recording(
    answer: Callable[[httpx.Request], httpx.Response],
) -> tuple[list[httpx.Request], Callable[[httpx.Request], httpx.Response]]:
    """A handler that keeps every request it is sent (in the returned list) and answers
    each with ``answer(request)``."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(request)

    return seen, handler


class Blackhole:
    """A port that accepts connections, reads whatever comes and never answers: what a
    connection that silently drops packets looks like to a probe."""

    def __init__(self) -> None:
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._held: list[tuple[asyncio.StreamWriter, asyncio.Task[object]]] = []

    @property
    def api_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/api"

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._held.append((writer, task))
        while await reader.read(65536):
            pass

    async def __aenter__(self) -> Blackhole:
        self._server = await asyncio.start_server(self._swallow, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer, _task in self._held:
            writer.close()
        await asyncio.gather(*(task for _writer, task in self._held), return_exceptions=True)
        await self._server.wait_closed()

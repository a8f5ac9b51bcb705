"""Prefect Cloud's answers where no real peer can give them (a 429, a garbled header, a
redirect): a :class:`PrefectConnection` whose transport is the test's handler, in memory.

``REFUSED_URL`` is a real address where connecting is refused at once: no mock needed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import httpx
from pydantic import SecretStr

from app.prefect import PrefectConnection
from app.settings import PREFECT_API_VERSION

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

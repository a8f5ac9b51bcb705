"""``serve``: the HTTP server (uvicorn, this service's protocol and limits) and its
signals."""

from __future__ import annotations

import contextlib
import os
import signal
from types import FrameType
from typing import TYPE_CHECKING

import structlog

from app.config import (
    Settings,
)
from app.service import shutdown_budget

if TYPE_CHECKING:
    import socket

    import uvicorn

log = structlog.get_logger("erathos_prefect_bridge.cli.serve")


def serve(settings: Settings, routes: list[str], sets: list[str]) -> int:
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from app.main import create_app
    from app.server.connections import ConnectionLimits, limited_http_protocol

    # Once uvicorn has shut down gracefully it raises the signal that stopped it again;
    # the stop was clean, so the process exits 0 (and a SIGTERM before uvicorn listens,
    # during start-up, exits 0 at once).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    if os.environ.get("FORWARDED_ALLOW_IPS"):
        log.warning(
            "FORWARDED_ALLOW_IPS is not read: list the proxies to trust in BRIDGE_TRUSTED_PROXIES"
        )
    requests_grace, _ = shutdown_budget(settings)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        # httptools (for its speed) with a deadline for every phase of a connection (the
        # idle one too: uvicorn's timeout_keep_alive is not used), header size and
        # connection limits.
        http=limited_http_protocol(ConnectionLimits.of(settings)),
        log_config=None,
        access_log=False,  # app.logs.RequestContext logs each request, with its request id
        # X-Forwarded-For and -Proto are read by app.server.forwarded, from BRIDGE_TRUSTED_PROXIES
        # only (uvicorn's own trusts 127.0.0.1 by default, and takes any text as a client).
        proxy_headers=False,
        # Annotated int, but handed to asyncio.wait_for, which takes any float.
        timeout_graceful_shutdown=requests_grace,  # type: ignore[arg-type]
        server_header=False,
    )
    server = _server_logging_ready(config, routes, sets)
    # What uvicorn.run does with one process and no reload (after Ctrl-C, uvicorn raises
    # SIGINT again once it has stopped).
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0 if server.started else STARTUP_FAILURE


def _server_logging_ready(
    config: uvicorn.Config, routes: list[str], sets: list[str]
) -> uvicorn.Server:
    """uvicorn's server, logging "service ready" once it listens (uvicorn binds its
    socket only after the app's lifespan has opened the service), with the routes and
    sets it loaded: the line an operator reads to see the routes file was taken."""
    import uvicorn

    class ListeningServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and not self.should_exit:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                log.info("service ready", host=host, port=port, routes=routes, sets=sets)

    return ListeningServer(config)


def _exit_cleanly(_signal: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)

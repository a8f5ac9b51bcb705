"""A real service process seen from raw sockets: its connections, one HTTP/1.1 answer
read by hand, and whether the server ended a connection (tests/server/test_connections.py,
tests/server/test_connection_deadlines.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from tests.support.processes import ServiceProcess, fast_service_environment

CLOSED_PREFECT = "http://127.0.0.1:9/api"  # nothing listens: events would queue
FLOW_ID = "3f2a1b0c-9d8e-4f7a-8b6c-5d4e3f2a1b01"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n"
SLACK = 1.5  # seconds a closing may take beyond its timeout on a loaded test machine

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def running_service(tmp_path: Path, **settings: str) -> AsyncIterator[ServiceProcess]:
    env = fast_service_environment(
        CLOSED_PREFECT, FLOW_ID, f"sqlite:///{tmp_path / 'bridge.db'}", **settings
    )
    service = ServiceProcess(env, tmp_path, tmp_path / "service.log")
    try:
        await service.launch()
        yield service
    finally:
        service.stop()


async def connect(service: ServiceProcess) -> Connection:
    return await asyncio.open_connection("127.0.0.1", int(service.env["BRIDGE_PORT"]))


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status and body of one HTTP/1.1 answer (bodies with a Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(line.partition(":")[2]) for line in lines if line.lower().startswith("content-length:")
    )
    return status, await reader.readexactly(length)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Wait until the server ends the connection (EOF or reset); True when it did."""
    with suppress(ConnectionError):
        while await reader.read(65536):
            pass
    return True


async def healthz(service: ServiceProcess) -> int:
    reader, writer = await connect(service)
    try:
        writer.write(HEALTHZ)
        status, _ = await read_response(reader)
        return status
    finally:
        writer.close()


def refused_counts(scraped: str) -> dict[str, int]:
    """The connections the server refused or closed at a limit, by reason, from ``/metrics``."""
    prefix = 'erathos_bridge_connections_refused_total{reason="'
    return {
        line[len(prefix) :].partition('"')[0]: int(float(line.rpartition(" ")[2]))
        for line in scraped.splitlines()
        if line.startswith(prefix)
    }

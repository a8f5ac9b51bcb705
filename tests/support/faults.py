"""A fault-injecting HTTP front for the real Prefect server.

Flow run creations (``POST .../flow_runs/`` and ``.../create_flow_run``, or the POSTs
to the paths given) take the next fault from a script; every other request, and every
creation once the script is used up, passes through to the real server. Faults are what
Prefect, Prefect Cloud and networks do: 503 without Retry-After, 500, 429 with
Retry-After in seconds or as an HTTP date, a connection reset, a stall past the
client's timeout (before or after the real server saw the request), and a 503 answered
after the real server saw the request (a proxy giving up on a slow answer).
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections import Counter
from email.utils import formatdate

import httpx

FAULTS = (
    "pass",
    "503",
    "500",
    "429-seconds",
    "429-date",
    "reset",
    "stall",
    "stall-after",
    "503-after",
)
CREATIONS = ("/flow_runs/", "/create_flow_run")


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        script: list[str] | None = None,
        stall: float = 3.0,
        faulted: tuple[str, ...] = CREATIONS,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.faulted = faulted  # the POSTs that take faults, by how their path ends
        self.script = list(script or [])
        self.stall = stall
        self.applied: list[str] = []  # the fault each flow run creation got, in order
        self.down = False  # while True, every connection is reset: the server is "down"
        # With no script left, each creation gets a random fault with this probability.
        self.chaos = 0.0
        self.chaos_faults = ["503", "503", "503", "429-seconds", "429-date"]
        self.creations: Counter[int] = Counter()  # status of each creation passed through
        self.port = 0
        self._server: asyncio.Server | None = None
        self._client = httpx.AsyncClient(base_url=self.upstream, timeout=30)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the proxy is stopping
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        if self.down:
            _reset(writer)
            return False
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        creates = method == "POST" and path.endswith(self.faulted)
        fault = "pass"
        if creates and self.script:
            fault = self.script.pop(0)
        elif creates and random.random() < self.chaos:
            fault = random.choice(self.chaos_faults)
        if creates:
            self.applied.append(fault)
        match fault:
            case "503" | "500":
                await _answer(writer, int(fault), b'{"detail": "injected fault"}')
            case "429-seconds":
                await _answer(writer, 429, b'{"detail": "slow down"}', {"Retry-After": "1"})
            case "429-date":
                when = formatdate(time.time() + 2, usegmt=True)
                await _answer(writer, 429, b'{"detail": "slow down"}', {"Retry-After": when})
            case "reset":
                _reset(writer)
                return False
            case "stall":
                await asyncio.sleep(self.stall)
                return False
            case _:
                forwarded = {
                    k: v for k, v in headers.items() if k not in ("host", "content-length")
                }
                try:
                    response = await self._client.request(
                        method, path, headers=forwarded, content=body
                    )
                except httpx.TransportError:
                    _reset(writer)  # the real server is not there: neither are we
                    return False
                if creates:
                    self.creations[response.status_code] += 1
                if fault == "stall-after":
                    await asyncio.sleep(self.stall)
                    return False
                if fault == "503-after":
                    await _answer(writer, 503, b'{"detail": "upstream took too long"}')
                    return True
                await _answer(
                    writer,
                    response.status_code,
                    response.content,
                    {"Content-Type": response.headers.get("content-type", "application/json")},
                )
        return True


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a crashed or unreachable server looks to a client."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _answer(
    writer: asyncio.StreamWriter, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {"Content-Type": "application/json"}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()

"""Connection limits of a real service process, seen from raw sockets: slow and silent
request heads are cut off, oversized ones are refused without taking memory, idle
kept-alive connections are closed, and connections past the bound are turned away. The
server's own count of what it closed and why (``/metrics``) says which limit acted."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from pathlib import Path

import httpx
import pytest

from tests.support.processes import ServiceProcess
from tests.support.rawhttp import (
    HEALTHZ,
    closed_by_server,
    connect,
    healthz,
    read_response,
    refused_counts,
    running_service,
)
from tests.support.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# Only keeps a broken test from hanging: a limit that does not act leaves the connection
# open for good, far beyond this.
HANG_GUARD = 30.0


async def refused(service: ServiceProcess) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=service.url) as client:
        return refused_counts((await client.get("/metrics")).text)


def rss_kb(service: ServiceProcess) -> int:
    assert service.process is not None
    status = Path(f"/proc/{service.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


async def test_a_trickled_or_silent_request_head_is_cut_off_while_others_are_answered(
    tmp_path: Path,
) -> None:
    timeout = 3.0
    head = b"GET /healthz HTTP/1.1\r\nHost: bridge\r\nX-Slow: " + b"a" * 100  # never ends
    sent: list[int] = []
    async with running_service(tmp_path, BRIDGE_HEADER_TIMEOUT=f"{timeout}s") as service:
        trickler, silent = await connect(service), await connect(service)
        trickler_closed = asyncio.create_task(closed_by_server(trickler[0]))
        silent_closed = asyncio.create_task(closed_by_server(silent[0]))

        async def trickle() -> None:
            # One byte every 0.5 s (a minute for the head): each keeps the connection busy.
            with suppress(ConnectionError):
                for byte in head:
                    trickler[1].write(bytes([byte]))
                    await trickler[1].drain()
                    sent.append(byte)
                    await asyncio.sleep(0.5)

        trickling = asyncio.create_task(trickle())
        try:
            await eventually(lambda: len(sent) >= 2, within=HANG_GUARD, what="a few bytes in")
            answered = await healthz(service)
            held_meanwhile = not (trickler_closed.done() or silent_closed.done())

            await eventually(
                trickler_closed.done, within=HANG_GUARD, what="the trickling client closed"
            )
            await eventually(silent_closed.done, within=HANG_GUARD, what="the silent client closed")
            trickled = len(sent)
            closed = await refused(service)
        finally:
            trickling.cancel()
            for _, writer in (trickler, silent):
                writer.close()

    assert answered == 200
    assert held_meanwhile  # the others are answered while both heads are still held
    assert trickled < len(head)  # cut off mid-head: its bytes never reset the deadline
    assert closed["head_too_slow"] == 2  # both closed by the header deadline
    assert closed["idle"] == 0


async def test_a_head_over_the_size_limit_is_refused_never_served_and_takes_no_memory(
    tmp_path: Path,
) -> None:
    async with running_service(tmp_path, BRIDGE_MAX_HEADER_BYTES="16384") as service:
        assert await healthz(service) == 200  # warmed up: the baseline is the served state
        baseline = peak = rss_kb(service)
        reader, writer = await connect(service)
        refused_while_sending = False
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\nX-Big: ")
            for _ in range(256):  # 16 MB of one header, in 64 KB writes
                writer.write(b"a" * 65536)
                await writer.drain()
                peak = max(peak, rss_kb(service))
            writer.write(b"\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            refused_while_sending = True
        try:
            status, body = await asyncio.wait_for(read_response(reader), 10)
        except (ConnectionError, asyncio.IncompleteReadError):
            status, body = 0, b""  # closed without an answer: refused too
        finally:
            writer.close()

        assert status in (431, 0), (status, body, refused_while_sending)
        await eventually(
            lambda: rss_kb(service) - baseline < 8 * 1024,
            within=5,
            what=f"RSS back near {baseline} kB",
        )
        assert peak - baseline < 8 * 1024, f"RSS grew by {peak - baseline} kB while sending"
        assert await healthz(service) == 200


async def test_heads_under_the_size_limit_and_large_bodies_are_served(tmp_path: Path) -> None:
    async with running_service(tmp_path, BRIDGE_MAX_HEADER_BYTES="16384") as service:
        reader, writer = await connect(service)
        try:
            # A head just under the limit, then (kept alive) a request whose body, written
            # with its head in one piece, is far larger than the limit: both are served.
            near_limit = b"GET /healthz HTTP/1.1\r\nHost: bridge\r\nX-Big: " + b"a" * 16000
            writer.write(near_limit + b"\r\n\r\n")
            assert (await read_response(reader))[0] == 200
            body = b"x" * 60000
            writer.write(
                b"POST /webhooks/erathos HTTP/1.1\r\nHost: bridge\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            assert (await read_response(reader))[0] == 401  # the app's answer: no token
            # The same head over the limit on the same connection: 431, from the server.
            writer.write(near_limit + b"a" * 1000 + b"\r\n\r\n")
            assert (await read_response(reader))[0] == 431
        finally:
            writer.close()


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(
    tmp_path: Path,
) -> None:
    timeout = 1.0  # uvicorn's own default is 5 s
    async with running_service(tmp_path, BRIDGE_KEEPALIVE_TIMEOUT=f"{timeout}s") as service:
        before = await refused(service)
        reader, writer = await connect(service)
        try:
            writer.write(HEALTHZ)
            status = (await read_response(reader))[0]
            closed = asyncio.create_task(closed_by_server(reader))
            await eventually(closed.done, within=HANG_GUARD, what="the idle connection closed")
            after = await refused(service)
        finally:
            writer.close()

    assert status == 200
    assert (before["idle"], after["idle"]) == (0, 1)  # closed by the server as idle
    assert after["head_too_slow"] == 0  # not taken for a slow next request


async def test_connections_past_the_bound_are_answered_503_and_closed(tmp_path: Path) -> None:
    bound = 4
    async with running_service(tmp_path, BRIDGE_MAX_CONNECTIONS=str(bound)) as service:
        kept = [await connect(service) for _ in range(bound)]
        try:
            for reader, writer in kept:  # each open and kept alive after an answer
                writer.write(HEALTHZ)
                assert (await read_response(reader))[0] == 200

            # One more: refused at once, even though it sends its request straight away.
            reader, writer = await connect(service)
            writer.write(HEALTHZ)
            status, body = await read_response(reader)
            assert (status, body) == (503, b"Too many connections")
            assert await closed_by_server(reader)
            writer.close()

            # Once one of them closes, a new connection is served again.
            kept.pop()[1].close()

            async def served() -> bool:
                try:
                    return await healthz(service) == 200
                except (ConnectionError, asyncio.IncompleteReadError):
                    return False

            await eventually(served, within=5, what="a connection served below the bound")
        finally:
            for _, kept_writer in kept:
                kept_writer.close()

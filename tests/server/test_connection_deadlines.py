"""Every phase of a connection has a deadline, seen from raw sockets against a real
service process: a request head, a request body (on every route, answered or not,
authenticated or not, chunked or not) and the idle time after an answer. No client can
hold a connection by sending a byte now and then, so hostile connections as many as the
bound let a real webhook in within the timeouts; /metrics counts each refusal."""

from __future__ import annotations

import asyncio
import socket
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.erathos import webhook_body
from tests.support.processes import ServiceProcess
from tests.support.rawhttp import (
    HEALTHZ,
    SLACK,
    Connection,
    closed_by_server,
    connect,
    read_response,
    refused_counts,
    running_service,
)
from tests.support.tokens import TOKEN, auth
from tests.support.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

HUGE = b"Content-Length: 1000000000\r\n"


def get(path: str, *headers: bytes) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bridge\r\n".encode() + b"".join(headers) + b"\r\n"


def post_webhook(*headers: bytes) -> bytes:
    return (
        b"POST /webhooks/erathos HTTP/1.1\r\nHost: bridge\r\n"
        b"Content-Type: application/json\r\n" + b"".join(headers) + b"\r\n"
    )


@dataclass(frozen=True)
class Hostile:
    """A connection that sends ``request``, reads its answer (``status``; None: there is
    none), sends ``then`` and falls silent."""

    request: bytes
    status: int | None
    then: bytes = b""


BEARER = f"Authorization: Bearer {TOKEN}\r\n".encode()
# What the issue found holding a connection for good, and the phases around them.
ANSWERED_BODIES = {
    "liveness": Hostile(get("/healthz", HUGE), 200, b"{"),
    "readiness": Hostile(get("/readyz", HUGE), 200, b"{"),
    "the sign-in page": Hostile(get("/ui/sign-in", HUGE), 200, b"t"),
    "the webhook, no token": Hostile(post_webhook(HUGE), 401, b"{"),
    "the webhook, too large": Hostile(post_webhook(BEARER, HUGE), 413, b"{"),
}
CHUNKED = Hostile(
    get("/healthz", b"Transfer-Encoding: chunked\r\n") + b"5\r\nhello\r\n", 200, b"3\r\nab"
)
BLANK_LINE_AFTER_AN_ANSWER = Hostile(HEALTHZ, 200, b"\r\n")
# What held a connection for good before every phase had a deadline: the answered
# bodies, a chunked one, and bytes after an answer that begin no request.
HOLDING = [*ANSWERED_BODIES.values(), CHUNKED, BLANK_LINE_AFTER_AN_ANSWER]
HALF_THE_NEXT_HEAD = Hostile(HEALTHZ, 200, b"GET /healthz HTTP/1.1\r\nHo")


async def hold(service: ServiceProcess, hostile: Hostile) -> tuple[Connection, asyncio.Task[bool]]:
    """Open the hostile connection; the task ends when the server has closed it."""
    reader, writer = await connect(service)
    writer.write(hostile.request)
    if hostile.status is not None:
        assert (await read_response(reader))[0] == hostile.status
    writer.write(hostile.then)
    await writer.drain()
    return (reader, writer), asyncio.create_task(closed_by_server(reader))


async def all_closed_by_server(
    service: ServiceProcess, hostiles: list[Hostile], within: float
) -> None:
    held = [await hold(service, hostile) for hostile in hostiles]
    try:
        await eventually(
            lambda: all(closed.done() for _, closed in held),
            within=within,
            what="every connection closed by the server",
        )
    finally:
        for (_, writer), closed in held:
            closed.cancel()
            writer.close()


async def test_a_body_is_cut_off_when_it_stops_on_every_route_answered_or_not(
    tmp_path: Path,
) -> None:
    timeout = 1.0
    async with running_service(tmp_path, BRIDGE_BODY_TIMEOUT=f"{timeout}s") as service:
        await all_closed_by_server(service, list(ANSWERED_BODIES.values()), within=timeout + SLACK)


async def test_a_chunked_body_is_cut_off_when_it_stops(tmp_path: Path) -> None:
    timeout = 1.0
    async with running_service(tmp_path, BRIDGE_BODY_TIMEOUT=f"{timeout}s") as service:
        await all_closed_by_server(service, [CHUNKED], within=timeout + SLACK)


async def test_bytes_after_an_answer_that_begin_no_request_leave_it_idle_and_closed(
    tmp_path: Path,
) -> None:
    timeout = 1.0
    async with running_service(tmp_path, BRIDGE_KEEPALIVE_TIMEOUT=f"{timeout}s") as service:
        await all_closed_by_server(service, [BLANK_LINE_AFTER_AN_ANSWER], within=timeout + SLACK)


async def test_the_next_head_on_a_kept_alive_connection_is_cut_off_when_it_stops(
    tmp_path: Path,
) -> None:
    timeout = 1.0
    async with running_service(tmp_path, BRIDGE_HEADER_TIMEOUT=f"{timeout}s") as service:
        await all_closed_by_server(service, [HALF_THE_NEXT_HEAD], within=timeout + SLACK)


async def test_a_body_that_stops_while_the_webhook_reads_it_gets_408_and_is_closed(
    tmp_path: Path,
) -> None:
    async with running_service(tmp_path, BRIDGE_BODY_TIMEOUT="1s") as service:
        reader, writer = await connect(service)
        try:
            writer.write(post_webhook(BEARER, b"Content-Length: 1000\r\n") + b'{"execution_id": ')
            assert (await read_response(reader))[0] == 408
            assert await asyncio.wait_for(closed_by_server(reader), SLACK)
        finally:
            writer.close()


async def test_as_many_hostile_connections_as_the_bound_still_let_a_webhook_in_in_time(
    tmp_path: Path,
) -> None:
    bound, timeout = 512, 5.0  # the default BRIDGE_MAX_CONNECTIONS; short timeouts
    settings = {f"BRIDGE_{name}": f"{timeout}s" for name in ("HEADER_TIMEOUT", "BODY_TIMEOUT")} | {
        "BRIDGE_KEEPALIVE_TIMEOUT": f"{timeout}s",
        "BRIDGE_MAX_CONNECTIONS": str(bound),
    }
    kinds = HOLDING
    async with running_service(tmp_path, **settings) as service:
        held = await asyncio.gather(*(hold(service, kinds[i % len(kinds)]) for i in range(bound)))
        try:
            async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:

                async def webhook() -> int:
                    try:
                        answer = await client.post(
                            "/webhooks/erathos", json=webhook_body(), headers=auth()
                        )
                    except httpx.TransportError:
                        return 0
                    return answer.status_code

                held_out = await webhook()  # every connection is taken: turned away
                statuses: list[int] = []

                async def accepted() -> bool:
                    statuses.append(await webhook())
                    return statuses[-1] == 202

                await eventually(accepted, within=timeout + 2 * SLACK, what="a webhook 202")
                await eventually(
                    lambda: all(closed.done() for _, closed in held),
                    within=SLACK,
                    what="every hostile connection closed by the server",
                )
                scraped = (await client.get("/metrics")).text
        finally:
            for (_, writer), closed in held:
                closed.cancel()
                writer.close()

    assert held_out == 503, held_out
    assert set(statuses) <= {503, 202}, statuses
    refused = refused_counts(scraped)
    assert refused["too_many"] >= 1
    assert refused["body_too_slow"] >= (len(kinds) - 1) * (bound // len(kinds))
    assert refused["idle"] >= bound // len(kinds)


async def test_metrics_count_each_refused_connection_by_reason(tmp_path: Path) -> None:
    bound = 3
    settings = {
        "BRIDGE_HEADER_TIMEOUT": "1s",
        "BRIDGE_BODY_TIMEOUT": "1s",
        "BRIDGE_KEEPALIVE_TIMEOUT": "1s",
        "BRIDGE_MAX_CONNECTIONS": str(bound),
    }
    async with running_service(tmp_path, **settings) as service:
        silent = [await connect(service) for _ in range(bound)]
        reader, writer = await connect(service)  # one too many
        assert (await read_response(reader))[0] == 503
        writer.close()
        for silent_reader, silent_writer in silent:
            assert await asyncio.wait_for(closed_by_server(silent_reader), 1 + SLACK)
            silent_writer.close()
        await all_closed_by_server(
            service, [ANSWERED_BODIES["liveness"], Hostile(HEALTHZ, 200)], within=1 + SLACK
        )
        reader, writer = await connect(service)
        writer.write(get("/healthz", b"X-Big: " + b"a" * 20_000 + b"\r\n"))
        assert (await read_response(reader))[0] == 431
        writer.close()
        async with httpx.AsyncClient(base_url=service.url) as client:
            scraped = (await client.get("/metrics")).text

    assert refused_counts(scraped) == {
        "too_many": 1,
        "head_too_large": 1,
        "head_too_slow": bound,
        "body_too_slow": 1,
        "idle": 1,
        "answer_unread": 0,
    }


async def test_answers_a_client_does_not_read_are_dropped_and_the_connection_closed(
    tmp_path: Path,
) -> None:
    # Pipelined requests whose answers (9 MB) outgrow every buffer between the two ends
    # while the client reads nothing: writing stalls, and a stall has a deadline too.
    requests = 1000
    async with (
        running_service(tmp_path, BRIDGE_BODY_TIMEOUT="1s") as service,
        httpx.AsyncClient(base_url=service.url) as client,
    ):
        answer_size = len((await client.get("/openapi.json")).content)

        async def cut_off() -> bool:
            return refused_counts((await client.get("/metrics")).text)["answer_unread"] == 1

        loop = asyncio.get_running_loop()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", int(service.env["BRIDGE_PORT"])))
            await loop.sock_sendall(sock, get("/openapi.json") * requests)
            await eventually(cut_off, within=10, what="the stalled connection closed")
            received = 0
            with suppress(ConnectionError):
                while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), 10):
                    received += len(chunk)

    assert received < requests * answer_size  # what was not read by the deadline is gone

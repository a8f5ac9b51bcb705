"""The load generator for fixed offered rates and for bursts, as its own process.

``open``: open loop. Request i is due at ``t0 + i / rate`` whatever happened to the
requests before it; its latency is measured from that due time (so a slow answer delays
nothing and hides nothing), and the lag between due time and the actual write shows
whether the generator kept its schedule. Every request is written down (execution id,
due, sent, answered, status) for the end-to-end match with the fake Prefect.

``burst``: closed loop, ``--count`` requests over ``--concurrency`` connections, as fast
as the service answers (filling a backlog); ``--at`` starts it at a given time, so that
several generators (one per replica, say) send together.

Times are ``time.monotonic()``: one clock for every process of the machine.

    python -m bench.loadgen --port 8080 --token T --nonce 7 --out r.json \
        open --rate 200 --duration 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from bench.body import WEBHOOK_PATH, body_parts, execution_id
from bench.client import Connection, encode_request
from bench.procs import instrument_priority

WARM_CONNECTIONS = 16
MAX_CONNECTIONS = 1000
# Open loop: past this many unanswered requests the service is overloaded beyond doubt;
# further requests are written down as not sent (status -1) instead of opening sockets.
MAX_OUTSTANDING = MAX_CONNECTIONS
NOT_SENT = -1


class Requests:
    """Encoded webhook requests: a fixed head and body around a fresh execution id."""

    def __init__(self, port: int, token: str, nonce: int) -> None:
        prefix, suffix = body_parts()
        self.port = port
        self.nonce = nonce
        self.prefix = prefix.encode()
        self.suffix = suffix.encode()
        length = len(self.prefix) + len(execution_id(nonce, 0)) + len(self.suffix)
        self.head = encode_request(
            "POST",
            WEBHOOK_PATH,
            port,
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token}",
                "Content-Length": str(length),
            },
        )

    def build(self, counter: int) -> tuple[str, bytes]:
        key = execution_id(self.nonce, counter)
        return key, self.head + self.prefix + key.encode() + self.suffix


# The service closes a kept-alive connection idle for 5 s (BRIDGE_KEEPALIVE_TIMEOUT): one idle
# longer than this is not reused, or a request could meet a connection being closed.
MAX_IDLE_SECONDS = 3.0


class Pool:
    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[Connection, float]] = []  # (connection, idle since)
        self.opened = 0

    async def warm(self, count: int) -> None:
        for _ in range(count):
            self.idle.append((await Connection.open(self.port), time.monotonic()))
            self.opened += 1

    async def take(self) -> Connection:
        while self.idle:
            connection, since = self.idle.pop()
            if time.monotonic() - since < MAX_IDLE_SECONDS:
                return connection
            connection.close()
            self.opened -= 1
        if self.opened >= MAX_CONNECTIONS:
            raise RuntimeError(f"more than {MAX_CONNECTIONS} requests outstanding")
        self.opened += 1
        return await Connection.open(self.port)

    def give(self, connection: Connection) -> None:
        if connection.reusable:
            self.idle.append((connection, time.monotonic()))
        else:
            self.opened -= 1
            connection.close()


async def open_loop(requests: Requests, rate: float, duration: float) -> dict[str, Any]:
    pool = Pool(requests.port)
    await pool.warm(WARM_CONNECTIONS)
    total = int(rate * duration)
    records: list[list[Any]] = []
    loop = asyncio.get_running_loop()

    outstanding = 0
    errors: dict[str, int] = {}

    async def one(counter: int, due: float) -> None:
        nonlocal outstanding
        key, raw = requests.build(counter)
        if outstanding >= MAX_OUTSTANDING:
            records.append([key, due, None, None, NOT_SENT])
            return
        outstanding += 1
        sent = time.monotonic()
        connection = None
        try:
            connection = await pool.take()
            sent = time.monotonic()
            connection.send(raw)
            status = (await connection.receive()).status
            pool.give(connection)
        except (OSError, asyncio.IncompleteReadError) as exc:
            status = 0
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            if connection is not None:
                connection.close()
                pool.opened -= 1
        outstanding -= 1
        records.append([key, due, sent, time.monotonic(), status])

    tasks = []
    t0 = loop.time() + 0.2  # loop.time() is time.monotonic()
    for counter in range(total):
        due = t0 + counter / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(counter, due)))
    await asyncio.gather(*tasks)
    for connection, _ in pool.idle:
        connection.close()
    return {
        "mode": "open",
        "rate": rate,
        "duration": duration,
        "errors": errors,
        "records": records,
    }


async def burst(
    requests: Requests, count: int, concurrency: int, at: float | None = None
) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    next_counter = 0
    connections = [await Connection.open(requests.port) for _ in range(concurrency)]
    if at is not None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))

    async def worker(connection: Connection) -> None:
        nonlocal next_counter
        while next_counter < count:
            counter = next_counter
            next_counter += 1
            _, raw = requests.build(counter)
            try:
                connection.send(raw)
                status = (await connection.receive()).status
            except (OSError, asyncio.IncompleteReadError):
                status = 0
                connection.close()
                connection = await Connection.open(requests.port)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        connection.close()

    started = time.monotonic()
    await asyncio.gather(*(worker(connection) for connection in connections))
    finished = time.monotonic()
    return {
        "mode": "burst",
        "count": count,
        "started": started,
        "finished": finished,
        "elapsed": finished - started,
        "statuses": statuses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--nonce", type=int, required=True, help="makes this run's ids unique")
    parser.add_argument("--out", type=Path, required=True)
    sub = parser.add_subparsers(dest="mode", required=True)
    fixed = sub.add_parser("open")
    fixed.add_argument("--rate", type=float, required=True)
    fixed.add_argument("--duration", type=float, required=True)
    closed = sub.add_parser("burst")
    closed.add_argument("--count", type=int, required=True)
    closed.add_argument("--concurrency", type=int, default=16)
    closed.add_argument("--at", type=float, help="time.monotonic() to start at")
    args = parser.parse_args()
    instrument_priority()
    requests = Requests(args.port, args.token, args.nonce)
    if args.mode == "open":
        result = asyncio.run(open_loop(requests, args.rate, args.duration))
    else:
        result = asyncio.run(burst(requests, args.count, args.concurrency, args.at))
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()

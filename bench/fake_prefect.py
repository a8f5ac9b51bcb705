"""A fake Prefect API that answers at once: a bare asyncio protocol, no framework.

    POST .../flow_runs/      201 {"id": <uuid>} (200 with the same id for a key seen before)
    GET  .../health          200 true
    POST .../flows/filter    200 []  (the service's credentials probe)
    GET  /_bench/stats       200 {"created", "duplicates", "first", "last"}
    POST anything else       202 {}  (a trivial sink: wrk's own ceiling is measured on it)

It records the arrival time (``time.monotonic()``, one clock for every process of the
machine) of each idempotency key, and writes them to ``--record`` on SIGTERM or SIGINT.
Requests must carry ``Content-Length`` (every client of the bench does).

    python -m bench.fake_prefect --port 4299 --record arrivals.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
import uuid
from pathlib import Path

from bench.procs import instrument_priority

REASONS = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request", 404: "Not Found"}


def response(status: int, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class Recorder:
    def __init__(self) -> None:
        self.runs: dict[str, str] = {}  # idempotency key -> flow run id
        self.arrivals: dict[str, float] = {}  # idempotency key -> first arrival
        self.duplicates = 0
        self.posts = 0

    def answer(self, method: str, path: str, body: bytes) -> bytes:
        path = path.split("?", 1)[0]
        if method == "POST" and path.endswith("/flow_runs/"):
            return self._create(body)
        if method == "GET" and path.endswith("/health"):
            return response(200, b"true")
        if method == "POST" and path.endswith("/flows/filter"):
            return response(200, b"[]")
        if method == "GET" and path == "/_bench/stats":
            times = self.arrivals.values()
            stats = {
                "created": len(self.arrivals),
                "duplicates": self.duplicates,
                "posts": self.posts,
                "first": min(times, default=None),
                "last": max(times, default=None),
            }
            return response(200, json.dumps(stats).encode())
        if method == "POST":
            return response(202, b"{}")
        return response(404, b'{"detail":"Not Found"}')

    def _create(self, body: bytes) -> bytes:
        now = time.monotonic()
        self.posts += 1
        try:
            key = str(json.loads(body)["idempotency_key"])
        except (ValueError, KeyError, TypeError):
            return response(400, b'{"detail":"no idempotency_key"}')
        run_id = self.runs.get(key)
        if run_id is not None:
            self.duplicates += 1
            return response(200, json.dumps({"id": run_id, "idempotency_key": key}).encode())
        run_id = str(uuid.uuid4())
        self.runs[key] = run_id
        self.arrivals[key] = now
        return response(201, json.dumps({"id": run_id, "idempotency_key": key}).encode())

    def dump(self, path: Path) -> None:
        record = {
            "arrivals": self.arrivals,
            "duplicates": self.duplicates,
            "posts": self.posts,
        }
        path.write_text(json.dumps(record))


class Http(asyncio.Protocol):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buffer[:end]).decode("latin-1")
            request_line, *header_lines = head.split("\r\n")
            length = 0
            for line in header_lines:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            method, path, _ = request_line.split(" ", 2)
            assert self.transport is not None
            self.transport.write(self.recorder.answer(method, path, body))


async def serve(port: int, record: Path | None) -> None:
    recorder = Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Http(recorder), "127.0.0.1", port, reuse_address=True, backlog=1024
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    if record is not None:
        recorder.dump(record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", type=Path)
    args = parser.parse_args()
    instrument_priority()
    asyncio.run(serve(args.port, args.record))


if __name__ == "__main__":
    main()

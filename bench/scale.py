"""Figure 10, a month of loads: the service against a store of a million events
(bench/fill.py), beside an empty store in the same run, on SQLite and on PostgreSQL.

Measured: the accept rate (wrk, Prefect down) on the empty and on the full store; the
upgrade to the current schema of a full store kept at the schema before; start to ready;
the time of every admin query and console page; webhook latency (open loop) alone and
while the slowest page is loaded in a loop; the store's size; pruning half the month
(the writes' latency meanwhile) and the size after it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import threading
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from app.routing.router import DEFAULT_CONNECTION, DEFAULT_ROUTE
from app.storage.database import Database
from app.storage.history import page_cursor
from app.storage.maintenance import prune_finished, reclaim_space
from app.storage.records import EventRecord, NewDelivery, NewEvent
from app.storage.store import Store
from bench import fill
from bench.body import WEBHOOK_PATH
from bench.databases import _fetch, create_database, database_url, drop_database, query
from bench.harness import Harness
from bench.procs import ROOT
from bench.stats import percentile
from tools.localprefect import free_port

CACHE = ROOT / "bench" / "results" / "scale"
EVENTS = int(os.environ.get("BENCH_SCALE_EVENTS", "1000000"))
TIMED = 3  # timed loads of each query and page (after one untimed)
WEBHOOK_RATE = "100"  # open-loop events/s while a page loops
WEBHOOK_SECONDS = "15"
ADMIN = "bench-admin-" + secrets.token_hex(16)


def on_sqlite(h: Harness) -> None:
    cached, filled_in = fill.cached_sqlite(CACHE, EVENTS)
    path = h.path("scale-full.db")
    fill.copy_sqlite(cached, path)
    try:
        empty = f"sqlite:///{h.path('scale-empty.db')}"
        h.data["scale_sqlite"] = _measure(h, "sqlite", empty, f"sqlite:///{path}", filled_in)
    finally:
        for leftover in h.work.glob("scale-*.db*"):
            leftover.unlink(missing_ok=True)


def on_postgres(h: Harness) -> None:
    cached, filled_in = fill.cached_postgres(EVENTS)
    empty, full = create_database("scale_empty"), f"{fill.CACHE_PREFIX[:-6]}run_{os.getpid()}"
    fill.copy_postgres(cached, full)
    try:
        urls = database_url(empty), database_url(full)
        h.data["scale_postgresql"] = _measure(h, "postgresql", *urls, filled_in)
    finally:
        drop_database(empty)
        drop_database(full)


def _measure(
    h: Harness, kind: str, empty: str, full: str, filled_in: float | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"events": EVENTS, "fill_seconds": filled_in}
    prefect_down = free_port()
    h.say(f"{kind}: accept on an empty store")
    service = h.service(f"scale-{kind}-empty", prefect_down, database_url=empty)
    try:
        out["accept_empty"] = _accept(h, service.port)
    finally:
        service.proc.stop()
    h.say(f"{kind}: upgrade of {EVENTS:,} events from schema 3")
    out["upgrade_seconds"] = asyncio.run(_upgrade_from_3(full))
    out["size_mb"] = _size_mb(full)
    settings = {"admin_token": ADMIN, "retention": "3650d"}
    service = h.service(f"scale-{kind}-full", prefect_down, database_url=full, **settings)
    out["ready_seconds"] = service.ready_seconds
    try:
        h.say(f"{kind}: accept on {EVENTS:,} events")
        out["accept_full"] = _accept(h, service.port)
        h.say(f"{kind}: every query and page")
        out["queries"] = _queries(service.port, full)
        slowest = max(out["queries"], key=lambda q: q["median_s"])
        h.say(f"{kind}: webhooks alone, then while {slowest['path']} loops")
        out["webhooks_alone"] = _webhooks(h, service.port, f"scale-{kind}-alone", None)
        out["webhooks_beside"] = _webhooks(h, service.port, f"scale-{kind}-beside", slowest["path"])
        out["slowest_path"] = slowest["path"]
    finally:
        service.proc.stop()
    service = h.service(f"scale-{kind}-restart", prefect_down, database_url=full, **settings)
    out["restart_ready_seconds"] = service.ready_seconds
    service.proc.stop()
    out["size_before_prune_mb"] = _size_mb(full)
    h.say(f"{kind}: prune half the month")
    out["prune"] = asyncio.run(_prune(full))
    out["size_after_prune_mb"] = _size_mb(full)
    return out


def _accept(h: Harness, port: int) -> dict[str, Any]:
    h.wrk(port, WEBHOOK_PATH, h.plan.warmup_seconds)
    return h.wrk(port, WEBHOOK_PATH, h.plan.wrk_seconds)


async def _upgrade_from_3(url: str) -> float:
    """Take the store back to schema 3 (no state column), then time its upgrade."""
    database = await Database.open(url)
    try:

        def back_to_3(conn: Any) -> None:
            conn.execute(text("DROP INDEX IF EXISTS events_state_received"))
            conn.execute(text("DROP INDEX IF EXISTS events_table_received"))
            conn.execute(text("DROP INDEX IF EXISTS events_received"))
            conn.execute(text("CREATE INDEX ix_events_received_at ON events (received_at)"))
            conn.execute(text("ALTER TABLE events DROP COLUMN state"))
            conn.execute(text("UPDATE bridge_meta SET value = '3' WHERE key = 'schema_version'"))

        await database.run(back_to_3)
    finally:
        await database.close()
    started = time.monotonic()
    database = await Database.open(url)
    seconds = time.monotonic() - started
    await database.close()
    if url.startswith("postgresql"):
        # What PostgreSQL's autovacuum does over the minutes after such an upgrade (a
        # million rows rewritten), done now so that it does not skew what follows.
        await _fetch(url, "VACUUM ANALYZE", autocommit=True)
    return seconds


def _size_mb(url: str) -> float:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        files = [path, path.with_name(path.name + "-wal")]
        return sum(f.stat().st_size for f in files if f.exists()) / 1e6
    rows = query(url, "SELECT pg_database_size(current_database())")
    return float(rows[0][0]) / 1e6


def _paths(url: str) -> list[str]:
    """Every admin query and console page, with ids and a cursor from the store."""
    month = query(url, "SELECT min(received_at), max(received_at) FROM events")[0]
    middle = (float(month[0]) + float(month[1])) / 2
    found = query(
        url,
        "SELECT id, received_at, execution_id FROM events WHERE state = 'dead' "  # noqa: S608
        f"AND received_at >= {middle!r} ORDER BY received_at LIMIT 1",
    )[0]
    event_id, received_at, execution_id = str(found[0]), float(found[1]), str(found[2])
    stub = EventRecord(event_id, execution_id, received_at, None, None, None, None, {}, None)
    cursor = page_cursor(stub)
    day = datetime.fromtimestamp(middle, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    admin = [
        "/events",
        *(f"/events?state={s}" for s in ("pending", "delivered", "dead", "ignored")),
        "/events?table_name=table_123",
        "/events?job_id=job-123",
        f"/events?execution_id={execution_id[-12:]}",
        f"/events?cursor={cursor}",
        f"/events?state=dead&cursor={cursor}",
        f"/events?state=delivered&table_name=table_123&cursor={cursor}",
        f"/events?since={day}&limit=500",
        f"/events/{event_id}",
    ]
    console = [
        "/ui/",
        "/ui/events",
        *(f"/ui/events?state={s}" for s in ("pending", "delivered", "dead")),
        "/ui/events?table=table_123",
        f"/ui/events?q={execution_id[-12:]}",
        "/ui/dead",
        f"/ui/dead?cursor={cursor}",
        f"/ui/events/{event_id}",
    ]
    return admin + console


def _signed_in(port: int) -> httpx.Client:
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=base, timeout=120, headers={"Authorization": f"Bearer {ADMIN}"})
    signed = client.post("/ui/sign-in", data={"token": ADMIN}, headers={"Origin": base})
    if signed.status_code != 303:
        raise RuntimeError(f"console sign-in answered {signed.status_code}: {signed.text[:200]}")
    return client


def _queries(port: int, url: str) -> list[dict[str, Any]]:
    found = []
    with closing(_signed_in(port)) as client:
        for path in _paths(url):
            times, statuses = [], set()
            for i in range(TIMED + 1):
                started = time.monotonic()
                answer = client.get(path)
                if i:
                    times.append(time.monotonic() - started)
                statuses.add(answer.status_code)
            found.append(
                {
                    "path": path,
                    "median_s": statistics.median(times),
                    "max_s": max(times),
                    "statuses": sorted(statuses),
                }
            )
    return found


def _webhooks(h: Harness, port: int, tag: str, looping: str | None) -> dict[str, Any]:
    """Open-loop webhooks at WEBHOOK_RATE; with ``looping``, that page loads meanwhile."""
    stop, loads = threading.Event(), []

    def loop() -> None:
        with closing(_signed_in(port)) as client:
            while not stop.is_set():
                started = time.monotonic()
                client.get(looping or "/")
                loads.append(time.monotonic() - started)

    reader = threading.Thread(target=loop, daemon=True) if looping else None
    if reader is not None:
        reader.start()
    try:
        result = h.loadgen(port, tag, "open", "--rate", WEBHOOK_RATE, "--duration", WEBHOOK_SECONDS)
    finally:
        stop.set()
        if reader is not None:
            reader.join()
    records = result["records"]
    latencies = [r[3] - r[1] for r in records if r[4] == 202]
    return {
        "sent": len(records),
        "accepted": len(latencies),
        "statuses": sorted({r[4] for r in records}),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000,
        "page_loads": len(loads),
    }


async def _prune(url: str) -> dict[str, Any]:
    """Prune the events older than half the month in the service's own code, while
    webhooks' events are stored beside it (every 20 ms): how long, how many, and the
    latency of those writes meanwhile."""
    database = await Database.open(url)
    store = Store(database)
    month = await database.run(
        lambda conn: conn.execute(
            text("SELECT min(received_at), max(received_at) FROM events")
        ).one()
    )
    cutoff = (float(month[0]) + float(month[1])) / 2
    writes: list[float] = []
    done = asyncio.Event()

    async def write() -> None:
        n = 0
        while not done.is_set():
            new = NewEvent(
                execution_id=f"prune-{os.getpid()}-{n}",
                payload={"n": n},
                deliveries=[NewDelivery(DEFAULT_ROUTE, DEFAULT_CONNECTION, f"prune-{n}")],
            )
            started = time.monotonic()
            await store.record_event(new)
            writes.append(time.monotonic() - started)
            n += 1
            await asyncio.sleep(0.02)

    writer = asyncio.create_task(write())
    try:
        started = time.monotonic()
        removed = await prune_finished(database, cutoff)
        seconds = time.monotonic() - started
        await reclaim_space(database)
        vacuum_seconds = time.monotonic() - started - seconds
    finally:
        done.set()
        await writer
        await database.close()
    return {
        "removed": removed,
        "seconds": seconds,
        "vacuum_seconds": vacuum_seconds,
        "writes": len(writes),
        "write_p50_ms": percentile(writes, 50) * 1000,
        "write_p99_ms": percentile(writes, 99) * 1000,
        "write_max_ms": max(writes) * 1000,
    }

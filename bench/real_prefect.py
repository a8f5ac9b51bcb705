"""The phases against a real Prefect server (tools.localprefect), one function each: 5, a
create through the service against a direct one; 8, a backlog drained into Prefect on
SQLite and on PostgreSQL against Prefect's own best rate; 9, one and two replicas sharing a
PostgreSQL store."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import httpx

from app.config import PREFECT_API_VERSION
from bench.body import WEBHOOK_PATH, execution_id
from bench.client import Connection
from bench.databases import create_database, database_url, drop_database
from bench.harness import TOKEN, Harness, Service, first_ok
from bench.procs import group_cpu_seconds
from bench.stats import percentile, span_rate, summary_ms
from tools.localprefect import PrefectServer, free_port

API_VERSION_HEADER = {"x-prefect-api-version": PREFECT_API_VERSION}
# Prefect's own rates: this many clients creating flow runs at once, each one after another.
DIRECT_CLIENTS = (1, 2, 4, 8)
# A 503 is retried after about a second, as the service retries one (app/delivery/turn.py).
BUSY_RETRY_SECONDS = (0.8, 1.2)
BACKLOG_CONCURRENCY = "8"  # 8: the load generator's connections filling the backlog
# 9: the load is split over this many generators (16 connections each, wrk's 32 in all),
# whether one replica or two take it, so that only the number of replicas differs.
REPLICA_LOADGENS = 2
REPLICA_LOADGEN_CONNECTIONS = 16
REPLICA_WARMUP = 200  # events per replica set before the measured burst


@dataclass(frozen=True)
class RealPrefect:
    server: PrefectServer
    database: str  # what the server keeps its data in: "sqlite" or "postgresql"
    direct_flow: str  # what direct creates (5 and 8's own rates) make runs of
    backlog_flow: str  # what 8's backlog is delivered to, so its runs are counted apart

    @classmethod
    def of(cls, server: PrefectServer, database: str) -> RealPrefect:
        return cls(
            server,
            database,
            server.create_flow("bench-direct"),
            server.create_flow("bench-backlog"),
        )


def on_sqlite(h: Harness) -> None:
    """5 and 8 on one Prefect server on SQLite (tools.localprefect's default), each a phase
    of its own: the server takes long enough to boot to be started once."""
    started = time.monotonic()
    server = PrefectServer.launch(port=free_port(), home=h.path("prefect-sqlite"), wait=180)
    try:
        h.data.setdefault("prefect_boot_seconds", {})["sqlite"] = time.monotonic() - started
        prefect = RealPrefect.of(server, "sqlite")
        if h.wants("5"):
            h.phase(
                "5: a create through the service against a direct one",
                partial(overhead_against_real_prefect, prefect=prefect),
            )
        if h.wants("8"):
            h.phase(
                "8 on SQLite: Prefect's own rates and the service's drain",
                partial(
                    drain_at_prefects_best_rate,
                    prefect=prefect,
                    backlog=h.plan.sqlite_prefect_backlog,
                ),
            )
    finally:
        server.stop()


def on_postgres(h: Harness) -> None:
    """8 and 9 on one Prefect server on PostgreSQL: a database of its own on the local
    server, created for the run and dropped after."""
    database = create_database("prefect")
    try:
        started = time.monotonic()
        server = PrefectServer(
            port=free_port(),
            home=h.path("prefect-postgres"),
            database_url=database_url(database, "postgresql+asyncpg"),
        )
        try:
            server.start(wait=180)
            h.data.setdefault("prefect_boot_seconds", {})["postgresql"] = time.monotonic() - started
            prefect = RealPrefect.of(server, "postgresql")
            if h.wants("8"):
                h.phase(
                    "8 on PostgreSQL: Prefect's own rates and the service's drain",
                    partial(
                        drain_at_prefects_best_rate,
                        prefect=prefect,
                        backlog=h.plan.postgres_prefect_backlog,
                    ),
                )
            if h.wants("9"):
                h.phase(
                    "9: one and two replicas on PostgreSQL",
                    partial(replicas_on_postgres, prefect=prefect),
                )
        finally:
            server.stop()
    finally:
        drop_database(database)


# -- 5 -------------------------------------------------------------------------------------


def overhead_against_real_prefect(h: Harness, prefect: RealPrefect) -> None:
    """5. A flow run created directly, then one through the webhook (answered with the
    flow run within BRIDGE_SYNC_WAIT), interleaved, one at a time."""
    port = prefect.server.port
    service = h.service("overhead", port, flow_id=prefect.direct_flow)
    try:
        result = asyncio.run(_interleaved_creates(h, port, service.port, prefect.direct_flow))
    finally:
        service.proc.stop()
    h.data["overhead"] = result


async def _interleaved_creates(
    h: Harness, prefect_port: int, service_port: int, flow_id: str
) -> dict[str, Any]:
    warmup, samples = 10, h.plan.prefect_samples
    direct_nonce, via_nonce = h.next_nonce(), h.next_nonce()
    prefix, suffix = h.body
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    direct = await Connection.open(prefect_port)
    via = await Connection.open(service_port)
    # The same create through httpx, the service's own client, as the service sends it
    # (app.delivery.client): the part of the overhead that is the client's, not the service's.
    client = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{prefect_port}/api/",
        headers=API_VERSION_HEADER,
        follow_redirects=False,
    )
    httpx_nonce = h.next_nonce()
    direct_s: list[float] = []
    httpx_s: list[float] = []
    via_s: list[float] = []
    not_delivered = 0

    async def one_direct(i: int) -> None:
        body = _flow_run(flow_id, execution_id(direct_nonce, i))
        started = time.perf_counter()
        answer = await direct.post_json("/api/flow_runs/", body, API_VERSION_HEADER)
        took = time.perf_counter() - started
        if answer.status != 201:
            raise RuntimeError(f"direct create answered {answer.status}: {answer.body[:300]!r}")
        if i >= warmup:
            direct_s.append(took)

    async def one_httpx(i: int) -> None:
        body = _flow_run(flow_id, execution_id(httpx_nonce, i))
        started = time.perf_counter()
        answer = await client.post("flow_runs/", json=body)
        took = time.perf_counter() - started
        if answer.status_code != 201:
            raise RuntimeError(f"httpx create answered {answer.status_code}: {answer.text[:300]}")
        if i >= warmup:
            httpx_s.append(took)

    async def one_via(i: int) -> None:
        nonlocal not_delivered
        body = f"{prefix}{execution_id(via_nonce, i)}{suffix}".encode()
        started = time.perf_counter()
        answer = await via.request("POST", WEBHOOK_PATH, body, headers)
        took = time.perf_counter() - started
        if answer.status != 202:
            raise RuntimeError(f"webhook answered {answer.status}: {answer.body[:300]!r}")
        if answer.json()["status"] != "delivered":
            not_delivered += 1
        if i >= warmup:
            via_s.append(took)

    try:
        kinds = [one_direct, one_httpx, one_via]
        for i in range(warmup + samples):
            # Rotate which goes first, so none always meets a warmer server.
            for one in kinds[i % 3 :] + kinds[: i % 3]:
                await one(i)
    finally:
        direct.close()
        via.close()
        await client.aclose()
    return {
        "samples": samples,
        "direct_ms": summary_ms(direct_s),
        "httpx_ms": summary_ms(httpx_s),
        "via_service_ms": summary_ms(via_s),
        "ratio_p50": percentile(via_s, 50) / percentile(direct_s, 50),
        "httpx_ratio_p50": percentile(httpx_s, 50) / percentile(direct_s, 50),
        "not_delivered_within_sync_wait": not_delivered,
    }


# -- 8 -------------------------------------------------------------------------------------


def drain_at_prefects_best_rate(h: Harness, prefect: RealPrefect, backlog: int) -> None:
    """8. Prefect's own rates (1, 2, 4 and 8 direct clients), then a backlog accepted
    while the server is down and drained into it once it is back (the flow runs'
    ``created`` times, and the 503s the service met), then Prefect's rates again in the
    reverse order: each rate is the mean of its two, and the best of the four is the
    baseline (the machine drifts, and the server's tables grow meanwhile)."""
    server, tag = prefect.server, f"prefect-{prefect.database}-drain"
    before = _direct_create_rates(h, prefect, DIRECT_CLIENTS)
    server.stop()  # Prefect is down: nothing listens on its port
    service = h.service(tag, server.port, flow_id=prefect.backlog_flow)
    result: dict[str, Any] = {"backlog": backlog, "prefect_database": prefect.database}
    try:
        mode = ("burst", "--count", str(backlog), "--concurrency", BACKLOG_CONCURRENCY)
        accepted = h.loadgen(service.port, tag, *mode)
        result["accept_statuses"] = accepted["statuses"]
        result["prefect_restart_seconds"], healthy_at = _restart(server)
        service_cpu0, prefect_cpu0 = service.proc.cpu(), _prefect_cpu(server)
        restarted = time.monotonic()
        runs = _runs_when_all_there(server, prefect.backlog_flow, backlog)
        elapsed = time.monotonic() - restarted
        # From the restart to the last run: the probe's wait, the drain, the last poll.
        result["service_cores_restart_to_drained"] = (service.proc.cpu() - service_cpu0) / elapsed
        result["prefect_cores_restart_to_drained"] = (_prefect_cpu(server) - prefect_cpu0) / elapsed
        result |= _drain_figures(runs)
        result["first_delivery_after_health_s"] = (
            result["first_created"] - healthy_at[0] if runs and healthy_at else float("nan")
        )
        result["attempts"] = service.attempts_by_status()
        result["deliveries"] = service.deliveries()
    finally:
        service.proc.stop()
    after = _direct_create_rates(h, prefect, DIRECT_CLIENTS[::-1])
    rates = {n: (before[n]["rate"] + after[n]["rate"]) / 2 for n in DIRECT_CLIENTS}
    best = max(rates, key=lambda n: rates[n])
    busy = int(result["attempts"].get("503", 0))
    result |= {
        "direct_creates": h.plan.direct_creates,
        "direct_before": before,
        "direct_after": after,
        "direct_rates": rates,
        "best_clients": best,
        "best_rate": rates[best],
        "ratio": result["drain_rate"] / rates[best],
        "busy_per_100_creates": 100 * busy / result["flow_runs"] if runs else float("nan"),
    }
    h.data.setdefault("prefect_drains", {})[prefect.database] = result


def _direct_create_rates(
    h: Harness, prefect: RealPrefect, order: tuple[int, ...]
) -> dict[int, dict[str, float]]:
    """Prefect's own create rate with each number of clients, in ``order``."""
    count, port, flow = h.plan.direct_creates, prefect.server.port, prefect.direct_flow
    return {
        clients: asyncio.run(_direct_creates(port, flow, h.next_nonce(), count, clients))
        for clients in order
    }


async def _direct_creates(
    port: int, flow_id: str, nonce: int, count: int, clients: int
) -> dict[str, float]:
    """``count`` flow runs created by ``clients`` clients at once, each one after another
    on its own connection; flow runs per second, and the 503s met. A 503 (Prefect on
    SQLite answers one to a write that meets another) is retried on a new connection after
    about a second, as the service retries one (Prefect closes the connection after it)."""
    next_index = 0
    busy = resets = 0

    async def client() -> None:
        nonlocal next_index, busy, resets
        connection = await Connection.open(port)
        while next_index < count:
            body = _flow_run(flow_id, execution_id(nonce, next_index))
            next_index += 1
            while True:
                try:
                    answer = await connection.post_json("/api/flow_runs/", body, API_VERSION_HEADER)
                except (OSError, asyncio.IncompleteReadError):
                    resets += 1  # the idempotency key makes sending it again safe
                    connection.close()
                    connection = await Connection.open(port)
                    continue
                if answer.status in (200, 201):
                    break
                if answer.status != 503:
                    raise RuntimeError(f"create answered {answer.status}: {answer.body[:300]!r}")
                busy += 1
                connection.close()
                await asyncio.sleep(random.uniform(*BUSY_RETRY_SECONDS))  # noqa: S311
                connection = await Connection.open(port)
        connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return {"clients": clients, "rate": count / elapsed, "busy_503": busy, "resets": resets}


def _drain_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A drain's figures from the flow runs it made (Prefect's ``created`` times)."""
    created = sorted(_epoch(run["created"]) for run in runs)
    return {
        "flow_runs": len(runs),
        "distinct_keys": len({run["idempotency_key"] for run in runs}),
        "drain_rate": span_rate(created),
        "drain_seconds": created[-1] - created[0] if created else float("nan"),
        "rate_first_90_percent": span_rate(created[: max(2, len(created) * 9 // 10)]),
        "first_created": created[0] if created else float("nan"),
    }


def _restart(server: PrefectServer) -> tuple[float, list[float]]:
    """Start the server again: how long that took, and when its health check first
    answered (wall clock, as Prefect's ``created``; empty if it never did)."""
    healthy_at: list[float] = []
    health = f"{server.api_url}/health"
    poller = threading.Thread(target=first_ok, args=(health, healthy_at), daemon=True)
    poller.start()
    restarted = time.monotonic()
    server.start(wait=180)
    poller.join(30)
    return time.monotonic() - restarted, healthy_at


def _prefect_cpu(server: PrefectServer) -> float:
    """CPU seconds of the server's processes (its own session), so far."""
    return group_cpu_seconds(server.process.pid) if server.process is not None else 0.0


def _runs_when_all_there(server: PrefectServer, flow_id: str, count: int) -> list[dict[str, Any]]:
    """The flow's runs once there are ``count`` of them, or as many as there are by a
    deadline that grows with ``count``."""
    deadline = time.monotonic() + 120 + count / 10
    while time.monotonic() < deadline:
        done = server.request("POST", "flow_runs/count", {"flows": {"id": {"any_": [flow_id]}}})
        if int(done) >= count:
            break
        time.sleep(0.25)
    return server.flow_runs(flow_id)


# -- 9 -------------------------------------------------------------------------------------


def replicas_on_postgres(h: Harness, prefect: RealPrefect) -> None:
    """9. One replica, then two sharing one store, each set on a fresh database of the
    local PostgreSQL server, against the same Prefect on PostgreSQL: a backlog accepted
    while Prefect is down, the load split over two generators that start together, then
    drained once Prefect is back. Rounds alternate the order (1 2, 2 1, ...), so that
    neither always meets a Prefect with fewer flow runs in its tables."""
    runs: dict[str, list[dict[str, Any]]] = {"1": [], "2": []}
    for round_ in range(h.plan.replica_rounds):
        for replicas in (1, 2) if round_ % 2 == 0 else (2, 1):
            h.say(f"round {round_ + 1}/{h.plan.replica_rounds}: {replicas} replica(s)")
            runs[str(replicas)].append(_replicas_once(h, prefect, replicas, round_))
    h.data["replicas"] = runs


def _replicas_once(h: Harness, prefect: RealPrefect, replicas: int, round_: int) -> dict[str, Any]:
    server, tag = prefect.server, f"replicas-{replicas}-round-{round_}"
    flow_id = server.create_flow(f"bench-{tag}")
    store = create_database(f"store_{replicas}_{round_}")
    services: list[Service] = []
    result: dict[str, Any] = {"replicas": replicas}
    try:
        server.stop()  # Prefect is down: nothing listens on its port
        for i in range(replicas):
            services.append(
                h.service(
                    f"{tag}-{i}", server.port, flow_id=flow_id, database_url=database_url(store)
                )
            )
        # Generator i sends to replica i mod n: with one replica both send to it.
        ports = [services[i % replicas].port for i in range(REPLICA_LOADGENS)]
        each = h.plan.replicas_backlog // REPLICA_LOADGENS
        warm = h.bursts_together(
            ports, f"{tag}-warmup", REPLICA_WARMUP // REPLICA_LOADGENS, REPLICA_LOADGEN_CONNECTIONS
        )
        cpu0 = sum(s.proc.cpu() for s in services)
        bursts = h.bursts_together(ports, tag, each, REPLICA_LOADGEN_CONNECTIONS)
        span = max(b["finished"] for b in bursts) - min(b["started"] for b in bursts)
        statuses = sum((Counter(b["statuses"]) for b in bursts), Counter())
        accepted = statuses["202"] + statuses["200"]
        result |= {
            "accept_statuses": dict(statuses),
            "accept_rate": accepted / span,
            "accept_seconds": span,
            "start_skew_s": max(b["started"] for b in bursts) - min(b["started"] for b in bursts),
            "service_cores_during_accept": (sum(s.proc.cpu() for s in services) - cpu0) / span,
        }
        expected = accepted + sum(
            int(n) for b in warm for code, n in b["statuses"].items() if code in ("200", "202")
        )
        result["backlog"] = expected
        result["pending_before"] = services[0].deliveries().get("pending", 0)
        result["prefect_restart_seconds"], _ = _restart(server)
        cpu1, restarted = sum(s.proc.cpu() for s in services), time.monotonic()
        runs = _runs_when_all_there(server, flow_id, expected)
        elapsed = time.monotonic() - restarted
        result["service_cores_restart_to_drained"] = (
            sum(s.proc.cpu() for s in services) - cpu1
        ) / elapsed
        result |= _drain_figures(runs)
        result["attempts"] = services[0].attempts_by_status()
        result["deliveries"] = services[0].deliveries()
    finally:
        for service in services:
            service.proc.stop()
        if server.process is None or server.process.poll() is not None:
            server.start(wait=180)  # up again for what follows, whatever failed
        drop_database(store)
    return result


def _flow_run(flow_id: str, key: str) -> dict[str, str]:
    """What the service sends Prefect for one event, less the parameters."""
    return {"name": "erathos_run_orders", "flow_id": flow_id, "idempotency_key": key}


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()

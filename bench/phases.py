"""The phases of the bench, one function each: it runs its processes and loads and stores
its raw figures in ``Harness.data`` under its own key, for bench/report.py to judge."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from app.settings import PREFECT_API_VERSION
from bench.body import WEBHOOK_PATH, execution_id
from bench.client import Connection
from bench.harness import TOKEN, FakePrefect, Harness, Service, first_ok, starved
from bench.loadgen import NOT_SENT
from bench.procs import Sampler, spawn, wait_ok
from bench.stats import max_in_window, percentile, span_rate, summary_ms
from tools.localprefect import PrefectServer, free_port

BURST_CONCURRENCY = 16
CAPPED_RATE = "100"  # BRIDGE_MAX_RATE of the capped drain; the report reads it back
API_VERSION_HEADER = {"x-prefect-api-version": PREFECT_API_VERSION}


def wrk_ceiling(h: Harness) -> None:
    """0. The same Lua script against the fake Prefect's bare asyncio sink: how far wrk
    itself goes, so that the load generator is not what limits 1 and 2."""
    sink = h.fake_prefect("wrk-self")
    try:
        h.wrk(sink.port, "/sink", h.plan.warmup_seconds)
        cpu0 = sink.proc.cpu()
        result = h.wrk(sink.port, "/sink", h.plan.wrk_seconds)
        result["sink_cores"] = (sink.proc.cpu() - cpu0) / (result["duration_us"] / 1e6)
    finally:
        sink.proc.stop()
    h.data["wrk_ceiling"] = result


def ceiling_and_ingest(h: Harness) -> None:
    """1 and 2. wrk against the bare FastAPI app (the stack's ceiling), then against the
    webhook with BRIDGE_DURABILITY=crash and =power, round by round so that the
    machine's drift hits all three alike."""
    rounds: list[dict[str, Any]] = []
    for round_ in range(h.plan.rounds):
        h.say(f"round {round_ + 1}/{h.plan.rounds}: ceiling, ingest crash, power")
        ceiling = _ceiling_once(h)
        crash, power = _ingest_once(h, "crash", round_), _ingest_once(h, "power", round_)
        rounds.append({"ceiling": ceiling, "crash": crash, "power": power})
    h.data["ingest_rounds"] = rounds


def _ceiling_once(h: Harness) -> dict[str, Any]:
    port = free_port()
    proc = spawn("ceiling", ["-m", "bench.ceiling", "--port", str(port)], h.path("ceiling.log"))
    try:
        wait_ok(f"http://127.0.0.1:{port}/healthz", proc, timeout=60)
        h.wrk(port, WEBHOOK_PATH, h.plan.warmup_seconds)
        cpu0 = proc.cpu()
        result = h.wrk(port, WEBHOOK_PATH, h.plan.wrk_seconds)
        result["server_cores"] = (proc.cpu() - cpu0) / (result["duration_us"] / 1e6)
    finally:
        proc.stop()
    return result


def _ingest_once(h: Harness, durability: str, round_: int) -> dict[str, Any]:
    tag = f"ingest-{durability}-{round_}"
    prefect = h.fake_prefect(tag)
    service = h.service(tag, prefect.port, durability=durability)
    try:
        with Sampler([service.proc]) as sampler:
            # The warm-up's deliveries are done before the window, so that it measures
            # the window's own work only.
            warm = h.wrk(service.port, WEBHOOK_PATH, h.plan.warmup_seconds)
            service.wait_settled(warm["ok"], 120)
            before = prefect.stats()["created"]
            cpu0, fake0 = service.proc.cpu(), prefect.proc.cpu()
            sched: dict[str, Any] = {}
            with starved(service.proc, sched):
                result = h.wrk(service.port, WEBHOOK_PATH, h.plan.wrk_seconds)
            result |= sched
            elapsed = result["duration_us"] / 1e6
            result["server_cores"] = (service.proc.cpu() - cpu0) / elapsed
            result["fake_prefect_cores"] = (prefect.proc.cpu() - fake0) / elapsed
            result["delivered_in_window_per_s"] = (prefect.stats()["created"] - before) / elapsed
            result["settle_seconds"] = service.wait_settled(warm["ok"] + result["ok"], 300)
            result["hwm_mb"] = service.proc.hwm_mb()
        result["peak_rss_mb"] = sampler.peak_mb("service")
        result["deliveries"] = service.deliveries()
    finally:
        service.proc.stop()
        recorded = prefect.finish()
    result["fake_prefect_created"] = len(recorded["arrivals"])
    result["fake_prefect_duplicates"] = recorded["duplicates"]
    return result


def accept_latency_and_end_to_end(h: Harness) -> None:
    """3 and 4. Open loop at 200, then 500 events/s, on one service: each request's
    latency from its scheduled send time, and from its send to the fake Prefect's arrival
    of its flow run request (matched by idempotency key, one monotonic clock)."""
    prefect = h.fake_prefect("latency")
    service = h.service("latency", prefect.port)
    runs: dict[str, dict[str, Any]] = {}
    try:
        for rate in ("200", "500"):
            runs[rate] = _open_loop(h, service, rate)
    finally:
        service.proc.stop()
        recorded = prefect.finish()
    figures: dict[str, Any] = {"duplicates": recorded["duplicates"]}
    for rate, result in runs.items():
        figures[rate] = _latency_figures(rate, result, recorded["arrivals"])
    h.data["latency"] = figures


def _open_loop(h: Harness, service: Service, rate: str) -> dict[str, Any]:
    cpu0 = service.proc.cpu()
    started = time.monotonic()
    sched: dict[str, Any] = {}
    with starved(service.proc, sched):
        mode = ("open", "--rate", rate, "--duration", str(h.plan.latency_seconds))
        result = h.loadgen(service.port, f"latency-{rate}", *mode)
    result |= sched
    result["server_cores"] = (service.proc.cpu() - cpu0) / (time.monotonic() - started)
    result["loadgen_cores"] = result["cpu_seconds"] / (time.monotonic() - started)
    # The next rate starts on an idle service, not on this one's deliveries.
    ok = sum(1 for r in result["records"] if r[4] in (200, 202))
    service.wait_settled(ok, 120)
    return result


def _latency_figures(
    rate: str, result: dict[str, Any], arrivals: dict[str, float]
) -> dict[str, Any]:
    # A record is (execution id, due, sent, answered, status): see bench/loadgen.py.
    records = result["records"]
    sent = [r for r in records if r[4] != NOT_SENT]
    return {
        "offered_rate": rate,
        "requests": len(records),
        "not_sent": len(records) - len(sent),
        "non_2xx": sum(1 for r in records if r[4] not in (200, 202)),
        "statuses": dict(Counter(str(r[4]) for r in records)),
        "accept_ms": summary_ms([r[3] - r[1] for r in sent]),
        "schedule_lag_ms": summary_ms([r[2] - r[1] for r in sent]),
        "scheduled_rate": span_rate([r[1] for r in records]),
        "sent_rate": span_rate([r[2] for r in sent]),
        "e2e_ms": summary_ms([arrivals[r[0]] - r[2] for r in sent if r[0] in arrivals]),
        "delivered": sum(1 for r in sent if r[0] in arrivals),
        "server_cores": result["server_cores"],
        "loadgen_cores": result["loadgen_cores"],
        "loadgen_errors": result["errors"],
        "service_on_cpu": result["service_on_cpu"],
        "service_runqueue_wait": result["service_runqueue_wait"],
    }


def backlog_drain(h: Harness) -> None:
    """6. A backlog accepted while nothing listens on Prefect's port, drained at the
    default concurrency once the fake Prefect starts there."""
    h.data["drain"] = _drain_once(h, "drain", h.plan.backlog)


def capped_backlog_drain(h: Harness) -> None:
    """6. The same with BRIDGE_MAX_RATE: the mean rate and the most in any 1 s window,
    as the service sent them and as the fake Prefect received them."""
    h.data["drain_capped"] = _drain_once(
        h, "drain-capped", h.plan.capped_backlog, max_rate=CAPPED_RATE
    )


def _drain_once(h: Harness, tag: str, count: int, **settings: str) -> dict[str, Any]:
    down_port = free_port()  # nothing listens here until the fake Prefect starts
    service = h.service(tag, down_port, **settings)
    prefect: FakePrefect | None = None
    result: dict[str, Any] = {"backlog": count, "settings": settings}
    try:
        with Sampler([service.proc]) as sampler:
            mode = ("burst", "--count", str(count), "--concurrency", str(BURST_CONCURRENCY))
            accepted = h.loadgen(service.port, tag, *mode)
            result["accept_statuses"] = accepted["statuses"]
            result["accept_rate"] = count / accepted["elapsed"]
            result["pending_before"] = service.deliveries().get("pending", 0)
            prefect = h.fake_prefect(tag, port=down_port)
            cpu0 = service.proc.cpu()
            timeout = 60 + count / 50
            with starved(service.proc, result):
                result["settle_seconds"] = service.wait_settled(count, timeout)
            result["server_cores_during_drain"] = (service.proc.cpu() - cpu0) / result[
                "settle_seconds"
            ]
            result["hwm_mb"] = service.proc.hwm_mb()
        result["peak_rss_mb"] = sampler.peak_mb("service")
        result["deliveries"] = service.deliveries()
        result["attempts"] = service.attempts_by_status()
        sent = service.answered_attempt_starts()
        result["sent_rate"] = span_rate(sent)
        result["sent_max_in_1s"] = max_in_window(sent, 1.0)
    finally:
        service.proc.stop()
        recorded = prefect.finish() if prefect is not None else {"arrivals": {}}
    times = sorted(recorded["arrivals"].values())
    result |= {
        "delivered": len(times),
        "duplicates": recorded.get("duplicates", 0),
        "rate": span_rate(times),
        "max_in_1s": max_in_window(times, 1.0),
        "first_after_up_s": times[0] - prefect.up_at if times and prefect else float("nan"),
        "drain_seconds": times[-1] - times[0] if times else float("nan"),
    }
    return result


def start_to_ready(h: Harness) -> None:
    """7. From process start to /readyz 200 on a fresh database, a few times, and the
    service's RSS when ready (the baseline of the peak RSS during 2 and 6)."""
    prefect = h.fake_prefect("ready")
    times: list[float] = []
    idle_rss: list[float] = []
    try:
        for i in range(h.plan.ready_starts):
            service = h.service(f"ready-{i}", prefect.port)
            times.append(service.ready_seconds)
            idle_rss.append(service.proc.hwm_mb() or float("nan"))
            service.proc.stop()
    finally:
        prefect.proc.stop()
    h.data["ready"] = {"seconds": times, "hwm_mb_at_ready": idle_rss}


@dataclass(frozen=True)
class RealPrefect:
    server: PrefectServer
    direct_flow: str  # what 5 creates runs of, directly and through the service
    backlog_flow: str  # what 8's backlog is delivered to, so its runs are counted apart


def against_real_prefect(h: Harness) -> None:
    """5 and 8, each a phase of its own, on one real Prefect server (tools.localprefect on
    SQLite): it takes long enough to boot to be started once."""
    port = free_port()
    started = time.monotonic()
    server = PrefectServer.launch(port=port, home=h.path("prefect-home"), wait=180)
    try:
        h.data["prefect_boot_seconds"] = time.monotonic() - started
        prefect = RealPrefect(
            server, server.create_flow("bench-direct"), server.create_flow("bench-backlog")
        )
        h.phase(
            "5: overhead against a real Prefect",
            partial(overhead_against_real_prefect, prefect=prefect),
        )
        h.phase("8: drain into a real Prefect", partial(drain_into_real_prefect, prefect=prefect))
    finally:
        server.stop()


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
    direct_s: list[float] = []
    via_s: list[float] = []
    not_delivered = 0

    async def one_direct(i: int) -> None:
        body = _flow_run(flow_id, execution_id(direct_nonce, i))
        started = time.perf_counter()
        await _create(direct, body)
        took = time.perf_counter() - started
        if i >= warmup:
            direct_s.append(took)

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
        for i in range(warmup + samples):
            # Alternate which goes first, so neither always meets a warmer server.
            first, second = (one_direct, one_via) if i % 2 == 0 else (one_via, one_direct)
            await first(i)
            await second(i)
    finally:
        direct.close()
        via.close()
    return {
        "samples": samples,
        "direct_ms": summary_ms(direct_s),
        "via_service_ms": summary_ms(via_s),
        "ratio_p50": percentile(via_s, 50) / percentile(direct_s, 50),
        "not_delivered_within_sync_wait": not_delivered,
    }


def drain_into_real_prefect(h: Harness, prefect: RealPrefect) -> None:
    """8. A backlog accepted while the server is down, drained into it once it is back:
    the flow runs' ``created`` times against the moment its health check first answered,
    and against its own sequential create rate."""
    server, count = prefect.server, h.plan.real_prefect_backlog

    def sequential_rate() -> float:
        nonce = h.next_nonce()
        return asyncio.run(_sequential_create_rate(nonce, server.port, prefect.direct_flow, count))

    # The server's own pace, before the outage and again after the drain (the mean is
    # the baseline: the machine's other load drifts).
    before = sequential_rate()
    server.stop()  # Prefect is down: nothing listens on its port
    service = h.service("real-prefect-drain", server.port, flow_id=prefect.backlog_flow)
    result: dict[str, Any] = {"backlog": count}
    try:
        mode = ("burst", "--count", str(count), "--concurrency", "8")
        accepted = h.loadgen(service.port, "real-prefect-drain", *mode)
        result["accept_statuses"] = accepted["statuses"]
        restart_seconds, healthy_at = _restart(server)
        result["prefect_restart_seconds"] = restart_seconds
        runs = _runs_when_all_there(server, prefect.backlog_flow, count)
        created = sorted(_epoch(run["created"]) for run in runs)
        result |= {
            "flow_runs": len(runs),
            "distinct_keys": len({run["idempotency_key"] for run in runs}),
            "drain_rate": span_rate(created),
            "drain_seconds": created[-1] - created[0] if created else float("nan"),
            "rate_first_90_percent": span_rate(created[: max(2, len(created) * 9 // 10)]),
            "first_delivery_after_health_s": created[0] - healthy_at[0]
            if created and healthy_at
            else float("nan"),
            "attempts": service.attempts_by_status(),
            "deliveries": service.deliveries(),
        }
        after = sequential_rate()
        result |= {
            "sequential_rate_before": before,
            "sequential_rate_after": after,
            "sequential_rate": (before + after) / 2,
        }
        result["ratio"] = result["drain_rate"] / result["sequential_rate"]
    finally:
        service.proc.stop()
    h.data["real_prefect_drain"] = result


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


async def _sequential_create_rate(nonce: int, port: int, flow_id: str, count: int) -> float:
    """Flow runs per second one client creates, one after another, on one connection."""
    connection = await Connection.open(port)
    try:
        started = time.perf_counter()
        for i in range(count):
            await _create(connection, _flow_run(flow_id, execution_id(nonce, i)))
        return count / (time.perf_counter() - started)
    finally:
        connection.close()


def _flow_run(flow_id: str, key: str) -> dict[str, str]:
    """What the service sends Prefect for one event, less the parameters."""
    return {"name": "erathos_run_orders", "flow_id": flow_id, "idempotency_key": key}


async def _create(prefect: Connection, flow_run: dict[str, str]) -> None:
    answer = await prefect.post_json("/api/flow_runs/", flow_run, API_VERSION_HEADER)
    if answer.status != 201:
        raise RuntimeError(f"direct create answered {answer.status}: {answer.body[:300]!r}")


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()

"""The phases of the bench against the fake Prefect (or none), one function each: it runs
its processes and loads and stores its raw figures in ``Harness.data`` under its own key,
for bench/report.py to judge. The phases against a real Prefect are in real_prefect.py."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from bench.body import WEBHOOK_PATH
from bench.harness import FakePrefect, Harness, Service, starved
from bench.loadgen import NOT_SENT
from bench.procs import Sampler, spawn, wait_ok
from bench.stats import max_in_window, span_rate, summary_ms
from tools.localprefect import free_port

BURST_CONCURRENCY = 16
CAPPED_RATE = "100"  # BRIDGE_MAX_RATE of the capped drain; the report reads it back


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


def ceiling_accept_and_ingest(h: Harness) -> None:
    """1 and 2. wrk against the bare FastAPI app (the stack's ceiling), then against the
    webhook with Prefect down (durable accept: stored and queued), then delivering to the
    fake Prefect with BRIDGE_DURABILITY=crash and =power, round by round so that the
    machine's drift hits all four alike."""
    rounds: list[dict[str, Any]] = []
    for round_ in range(h.plan.rounds):
        h.say(f"round {round_ + 1}/{h.plan.rounds}: ceiling, durable accept, ingest crash, power")
        ceiling = _ceiling_once(h)
        accept = _durable_accept_once(h, round_)
        crash, power = _ingest_once(h, "crash", round_), _ingest_once(h, "power", round_)
        rounds.append({"ceiling": ceiling, "accept": accept, "crash": crash, "power": power})
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


def _durable_accept_once(h: Harness, round_: int) -> dict[str, Any]:
    """The webhook at the service's defaults while nothing listens on Prefect's port: each
    event is committed and queued (the circuit opens after the first refusals), none
    delivered, so the window measures acceptance alone."""
    service = h.service(f"accept-{round_}", free_port())
    try:
        with Sampler([service.proc]) as sampler:
            warm = h.wrk(service.port, WEBHOOK_PATH, h.plan.warmup_seconds)
            cpu0 = service.proc.cpu()
            sched: dict[str, Any] = {}
            with starved(service.proc, sched):
                result = h.wrk(service.port, WEBHOOK_PATH, h.plan.wrk_seconds)
            result |= sched
            result["server_cores"] = (service.proc.cpu() - cpu0) / (result["duration_us"] / 1e6)
            result["hwm_mb"] = service.proc.hwm_mb()
        result["peak_rss_mb"] = sampler.peak_mb("service")
        result["accepted"] = warm["ok"] + result["ok"]
        result["deliveries"] = service.deliveries()
        result["attempts"] = service.attempts_by_status()
    finally:
        service.proc.stop()
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
    default concurrency once the fake Prefect starts there (information: a fake has no
    limit to approach; 8 measures drains against a real Prefect's)."""
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

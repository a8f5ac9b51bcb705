"""The benchmark of issues 7 and 9, in one go on one machine: every figure beside its
baseline measured in the same run, printed as a table and written to
``bench/results/latest.json``.

    python3 tools/dev.py bench [--quick]      (or: .venv/bin/python -m bench.run [--quick])

Phases (each a fresh service process on a fresh SQLite file, as shipped, unless noted):

 0. wrk's own ceiling: the same Lua script against a trivial asyncio responder.
 1. Ceiling: a bare FastAPI app on the same uvicorn settings (bench/ceiling.py).
 2. Ingest: wrk on ``POST /webhooks/erathos``, deliveries to a fake Prefect
    (bench/fake_prefect.py), BRIDGE_DURABILITY=crash, then =power. 1 and 2 alternate
    round by round so drift hits both alike.
 3, 4. Open-loop accept latency at 200 and 500 events/s, and end to end (the webhook's
    POST to the fake Prefect receiving the flow run request) at 200 events/s.
 6. Backlog drain: events accepted while nothing listens on Prefect's port, then the
    fake Prefect starts there; at the default concurrency, and with BRIDGE_MAX_RATE=100.
 7. Peak RSS of the service during 2 and 6; time from process start to /readyz 200.
 5. A real Prefect server (tools.localprefect): a flow run created directly vs through
    the service, sequentially, interleaved.
 8. Issue 9: a backlog of events accepted while that server is down, drained into it
    when it is back, against its own sequential create rate measured right after.

Only 127.0.0.1 is ever contacted. Targets are printed as pass/miss, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from bench.body import WEBHOOK_PATH, body_parts, execution_id
from bench.client import Connection
from bench.loadgen import NOT_SENT
from bench.procs import (
    ROOT,
    Proc,
    Sampler,
    http_status,
    service_env,
    spawn,
    wait_ok,
)
from bench.stats import max_in_window, percentile, span_rate, summary_ms
from tools.localprefect import PrefectServer, free_port, prefect_executable

TOKEN = "bench-webhook-token-0123456789"  # noqa: S105 (a throwaway token for a local run)
FAKE_FLOW_ID = "00000000-0000-4000-8000-00000000f10f"
LUA = ROOT / "bench" / "webhook.lua"
RESULTS = ROOT / "bench" / "results"
WRK_THREADS = 1
WRK_CONNECTIONS = 32
BURST_CONCURRENCY = 16
API_VERSION_HEADER = {"x-prefect-api-version": "0.8.4"}


@dataclass(frozen=True)
class Plan:
    name: str
    wrk_seconds: int
    warmup_seconds: int
    rounds: int
    latency_seconds: float
    backlog: int
    capped_backlog: int
    ready_starts: int
    prefect_samples: int
    issue9_backlog: int


FULL = Plan("full", 10, 2, 2, 15.0, 10_000, 1_500, 5, 200, 300)
QUICK = Plan("quick", 4, 1, 1, 5.0, 2_000, 400, 3, 60, 300)


@dataclass
class Row:
    number: str
    figure: str
    measured: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    ok: bool | None = None  # None: information only

    @property
    def result(self) -> str:
        return {True: "pass", False: "MISS", None: ""}[self.ok]


def fmt(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:,.{digits}f}"


@dataclass
class Service:
    proc: Proc
    port: int
    database: Path
    ready_seconds: float

    def deliveries(self) -> dict[str, int]:
        """Deliveries by state, read from the store's SQLite file (read-only, WAL)."""
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10) as db:
            rows = db.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall()
        return {str(state): int(count) for state, count in rows}

    def attempts_by_status(self) -> dict[str, int]:
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10) as db:
            rows = db.execute(
                "SELECT coalesce(status_code, outcome), count(*) FROM attempts GROUP BY 1"
            ).fetchall()
        return {str(status): int(count) for status, count in rows}

    def answered_attempt_starts(self) -> list[float]:
        """When each attempt that Prefect answered was sent (``attempts.started_at``)."""
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10) as db:
            rows = db.execute(
                "SELECT started_at FROM attempts WHERE status_code IS NOT NULL"
            ).fetchall()
        return sorted(float(started) for (started,) in rows)

    def wait_settled(self, expected: int, timeout: float) -> float:
        """Wait until no delivery is pending and at least ``expected`` are finished."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            states = self.deliveries()
            finished = states.get("delivered", 0) + states.get("dead", 0)
            if states.get("pending", 0) == 0 and finished >= expected:
                return time.monotonic() - started
            time.sleep(0.1)
        raise TimeoutError(f"deliveries still pending after {timeout:.0f} s: {self.deliveries()}")


@dataclass
class FakePrefect:
    proc: Proc
    port: int
    record: Path
    up_at: float  # time.monotonic() when it first answered

    def stats(self) -> dict[str, Any]:
        async def get() -> dict[str, Any]:
            connection = await Connection.open(self.port)
            try:
                answer: dict[str, Any] = (await connection.request("GET", "/_bench/stats")).json()
                return answer
            finally:
                connection.close()

        return asyncio.run(get())

    def finish(self) -> dict[str, Any]:
        """Stop it and read what it recorded."""
        self.proc.stop()
        recorded: dict[str, Any] = json.loads(self.record.read_text())
        return recorded


@dataclass
class Bench:
    plan: Plan
    work: Path
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    load: dict[str, dict[str, float]] = field(default_factory=dict)
    nonce: int = field(default_factory=lambda: random.getrandbits(30) << 2)
    _prefix_suffix: tuple[str, str] = field(default_factory=body_parts)

    # -- helpers -----------------------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.work / name

    def next_nonce(self) -> int:
        self.nonce = (self.nonce + 1) % (1 << 32)
        return self.nonce

    def say(self, message: str) -> None:
        print(f"bench: {message}", flush=True)

    def fake_prefect(self, tag: str, port: int | None = None) -> FakePrefect:
        port = port or free_port()
        record = self.path(f"{tag}-arrivals.json")
        proc = spawn(
            "fake-prefect",
            ["-m", "bench.fake_prefect", "--port", str(port), "--record", str(record)],
            self.path(f"{tag}-fake-prefect.log"),
        )
        wait_ok(f"http://127.0.0.1:{port}/api/health", proc, timeout=30)
        return FakePrefect(proc, port, record, time.monotonic())

    def service(
        self, tag: str, prefect_port: int, flow_id: str = FAKE_FLOW_ID, **settings: str
    ) -> Service:
        port = free_port()
        database = self.path(f"{tag}.db")
        env = service_env(
            port=port,
            database=database,
            prefect_port=prefect_port,
            flow_id=flow_id,
            token=TOKEN,
            **settings,
        )
        proc = spawn(
            "service", ["-m", "app.cli", "serve"], self.path(f"{tag}-service.log"), env, self.work
        )
        ready = wait_ok(f"http://127.0.0.1:{port}/readyz", proc, timeout=60)
        return Service(proc, port, database, ready)

    def wrk(self, port: int, path: str, seconds: int) -> dict[str, Any]:
        """One wrk run with bench/webhook.lua; requests/s, errors, and wrk's own CPU."""
        prefix, suffix = self._prefix_suffix
        env = os.environ | {
            "BENCH_PATH": path,
            "BENCH_TOKEN": TOKEN,
            "BENCH_PREFIX": prefix,
            "BENCH_SUFFIX": suffix,
            "BENCH_NONCE": f"{self.next_nonce():08x}",
        }
        command = [
            "wrk",
            f"-t{WRK_THREADS}",
            f"-c{WRK_CONNECTIONS}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(LUA),
            f"http://127.0.0.1:{port}{path}",
        ]
        with child_cpu() as cpu:
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
            )
        line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
        result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
        elapsed = result["duration_us"] / 1e6
        ok = result["requests"] - result["status"]
        result |= {
            "ok": ok,
            "rps": ok / elapsed,
            "errors": sum(result[k] for k in ("connect", "read", "write", "status", "timeout")),
            "wrk_cores": cpu() / elapsed,
        }
        return result

    def loadgen(self, port: int, tag: str, *mode: str) -> dict[str, Any]:
        out = self.path(f"{tag}-loadgen.json")
        args = ["-m", "bench.loadgen", "--port", str(port), "--token", TOKEN]
        args += ["--nonce", str(self.next_nonce()), "--out", str(out), *mode]
        with child_cpu() as cpu:
            proc = spawn("loadgen", args, self.path(f"{tag}-loadgen.log"))
            code = proc.popen.wait(900)
        if code != 0:
            raise RuntimeError(f"the load generator failed ({code}):\n{proc.tail()}")
        result: dict[str, Any] = json.loads(out.read_text())
        result["cpu_seconds"] = cpu()
        return result

    def add(self, *rows: Row) -> None:
        self.rows.extend(rows)

    def phase(self, name: str, body: Callable[[], None]) -> None:
        """Run one phase; a failure is reported and the next phase still runs. Notes how
        busy the whole machine was meanwhile (others' processes skew every figure)."""
        self.say(f"{name} ...")
        started = time.monotonic()
        busy0 = machine_busy_seconds()
        try:
            body()
        except Exception as exc:
            self.errors[name] = f"{type(exc).__name__}: {exc}"
            self.say(f"{name} FAILED: {exc}")
            traceback.print_exc()
        elapsed = time.monotonic() - started
        busy = (machine_busy_seconds() - busy0) / elapsed
        self.load[name] = {"seconds": elapsed, "machine_busy_cores": busy}
        self.say(f"{name} done in {elapsed:.0f} s (machine busy {busy:.2f} cores)")

    # -- 0: wrk's own ceiling ----------------------------------------------------------

    def wrk_ceiling(self) -> None:
        sink = self.fake_prefect("wrk-self")
        try:
            self.wrk(sink.port, "/sink", self.plan.warmup_seconds)
            cpu0 = sink.proc.cpu()
            result = self.wrk(sink.port, "/sink", self.plan.wrk_seconds)
            result["sink_cores"] = (sink.proc.cpu() - cpu0) / (result["duration_us"] / 1e6)
        finally:
            sink.proc.stop()
        self.data["wrk_ceiling"] = result

    # -- 1, 2: ceiling and ingest ------------------------------------------------------

    def ceiling_once(self) -> dict[str, Any]:
        port = free_port()
        proc = spawn(
            "ceiling", ["-m", "bench.ceiling", "--port", str(port)], self.path("ceiling.log")
        )
        try:
            wait_ok(f"http://127.0.0.1:{port}/healthz", proc, timeout=60)
            self.wrk(port, WEBHOOK_PATH, self.plan.warmup_seconds)
            cpu0 = proc.cpu()
            result = self.wrk(port, WEBHOOK_PATH, self.plan.wrk_seconds)
            result["server_cores"] = (proc.cpu() - cpu0) / (result["duration_us"] / 1e6)
        finally:
            proc.stop()
        return result

    def ingest_once(self, durability: str, round_: int) -> dict[str, Any]:
        tag = f"ingest-{durability}-{round_}"
        prefect = self.fake_prefect(tag)
        service = self.service(tag, prefect.port, durability=durability)
        try:
            with Sampler([service.proc]) as sampler:
                warm = self.wrk(service.port, WEBHOOK_PATH, self.plan.warmup_seconds)
                service.wait_settled(warm["ok"], 120)
                before = prefect.stats()["created"]
                cpu0, fake0 = service.proc.cpu(), prefect.proc.cpu()
                sched: dict[str, Any] = {}
                with starved(service.proc, sched):
                    result = self.wrk(service.port, WEBHOOK_PATH, self.plan.wrk_seconds)
                result |= sched
                elapsed = result["duration_us"] / 1e6
                result["server_cores"] = (service.proc.cpu() - cpu0) / elapsed
                result["fake_prefect_cores"] = (prefect.proc.cpu() - fake0) / elapsed
                result["delivered_in_window_per_s"] = (
                    prefect.stats()["created"] - before
                ) / elapsed
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

    def ingest(self) -> None:
        rounds: list[dict[str, Any]] = []
        for round_ in range(self.plan.rounds):
            self.say(f"round {round_ + 1}/{self.plan.rounds}: ceiling, ingest crash, power")
            rounds.append(
                {
                    "ceiling": self.ceiling_once(),
                    "crash": self.ingest_once("crash", round_),
                    "power": self.ingest_once("power", round_),
                }
            )
        self.data["ingest_rounds"] = rounds

    # -- 3, 4: accept latency and end to end ---------------------------------------------

    def latency(self) -> None:
        prefect = self.fake_prefect("latency")
        service = self.service("latency", prefect.port)
        runs: dict[str, dict[str, Any]] = {}
        try:
            for rate in ("200", "500"):
                cpu0 = service.proc.cpu()
                started = time.monotonic()
                sched: dict[str, Any] = {}
                with starved(service.proc, sched):
                    result = self.loadgen(
                        service.port,
                        f"latency-{rate}",
                        "open",
                        "--rate",
                        rate,
                        "--duration",
                        str(self.plan.latency_seconds),
                    )
                result |= sched
                result["server_cores"] = (service.proc.cpu() - cpu0) / (time.monotonic() - started)
                result["loadgen_cores"] = result["cpu_seconds"] / (time.monotonic() - started)
                ok = sum(1 for r in result["records"] if r[4] in (200, 202))
                service.wait_settled(ok, 120)
                runs[rate] = result
        finally:
            service.proc.stop()
            recorded = prefect.finish()
        arrivals: dict[str, float] = recorded["arrivals"]
        out: dict[str, Any] = {"duplicates": recorded["duplicates"]}
        for rate, result in runs.items():
            records = result["records"]
            sent = [r for r in records if r[4] != NOT_SENT]
            out[rate] = {
                "offered_rate": rate,
                "requests": len(records),
                "not_sent": len(records) - len(sent),
                "non_2xx": sum(1 for r in records if r[4] not in (200, 202)),
                "statuses": _count(str(r[4]) for r in records),
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
        self.data["latency"] = out

    # -- 6, 7: backlog drain and RSS -------------------------------------------------------

    def drain_once(self, tag: str, count: int, **settings: str) -> dict[str, Any]:
        down_port = free_port()  # nothing listens here until the fake Prefect starts
        service = self.service(tag, down_port, **settings)
        prefect: FakePrefect | None = None
        result: dict[str, Any] = {"backlog": count, "settings": settings}
        try:
            with Sampler([service.proc]) as sampler:
                accepted = self.loadgen(
                    service.port,
                    tag,
                    "burst",
                    "--count",
                    str(count),
                    "--concurrency",
                    str(BURST_CONCURRENCY),
                )
                result["accept_statuses"] = accepted["statuses"]
                result["accept_rate"] = count / accepted["elapsed"]
                result["pending_before"] = service.deliveries().get("pending", 0)
                prefect = self.fake_prefect(tag, port=down_port)
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

    def drain(self) -> None:
        self.data["drain"] = self.drain_once("drain", self.plan.backlog)

    def drain_capped(self) -> None:
        self.data["drain_capped"] = self.drain_once(
            "drain-capped", self.plan.capped_backlog, max_rate="100"
        )

    def ready(self) -> None:
        prefect = self.fake_prefect("ready")
        times: list[float] = []
        idle_rss: list[float] = []
        try:
            for i in range(self.plan.ready_starts):
                service = self.service(f"ready-{i}", prefect.port)
                times.append(service.ready_seconds)
                idle_rss.append(service.proc.hwm_mb() or float("nan"))
                service.proc.stop()
        finally:
            prefect.proc.stop()
        self.data["ready"] = {"seconds": times, "hwm_mb_at_ready": idle_rss}

    # -- 5, 8: a real Prefect server -------------------------------------------------------

    def real_prefect(self) -> None:
        home = self.path("prefect-home")
        port = free_port()
        started = time.monotonic()
        server = PrefectServer.launch(port=port, home=home, wait=180)
        try:
            self.data["prefect_boot_seconds"] = time.monotonic() - started
            direct_flow = server.create_flow("bench-direct")
            backlog_flow = server.create_flow("bench-backlog")
            self.phase(
                "5: overhead against a real Prefect", lambda: self.overhead(server, direct_flow)
            )
            self.phase(
                "8: issue 9 drain into a real Prefect",
                lambda: self.issue9(server, direct_flow, backlog_flow),
            )
        finally:
            server.stop()

    def overhead(self, server: PrefectServer, flow_id: str) -> None:
        service = self.service("overhead", server.port, flow_id=flow_id)
        try:
            result = asyncio.run(
                self._overhead(server.port, service.port, flow_id, self.plan.prefect_samples)
            )
        finally:
            service.proc.stop()
        self.data["overhead"] = result

    async def _overhead(
        self, prefect_port: int, service_port: int, flow_id: str, samples: int
    ) -> dict[str, Any]:
        warmup = 10
        direct_nonce, via_nonce = self.next_nonce(), self.next_nonce()
        prefix, suffix = self._prefix_suffix
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        direct = await Connection.open(prefect_port)
        via = await Connection.open(service_port)
        direct_s: list[float] = []
        via_s: list[float] = []
        not_delivered = 0

        async def one_direct(i: int) -> None:
            body = {
                "name": "erathos_run_orders",
                "flow_id": flow_id,
                "idempotency_key": execution_id(direct_nonce, i),
            }
            started = time.perf_counter()
            answer = await direct.post_json("/api/flow_runs/", body, API_VERSION_HEADER)
            took = time.perf_counter() - started
            if answer.status != 201:
                raise RuntimeError(f"direct create answered {answer.status}: {answer.body[:300]!r}")
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

    def issue9(self, server: PrefectServer, direct_flow: str, backlog_flow: str) -> None:
        count = self.plan.issue9_backlog
        # The server's own pace, before the outage and again after the drain (the mean is
        # the baseline: the machine's other load drifts).
        before = asyncio.run(self._sequential_rate(server.port, direct_flow, count))
        server.stop()  # Prefect is down: nothing listens on its port
        service = self.service("issue9", server.port, flow_id=backlog_flow)
        result: dict[str, Any] = {"backlog": count}
        try:
            accepted = self.loadgen(
                service.port, "issue9", "burst", "--count", str(count), "--concurrency", "8"
            )
            result["accept_statuses"] = accepted["statuses"]
            healthy_at: list[float] = []
            poller = threading.Thread(
                target=_first_ok, args=(f"{server.api_url}/health", healthy_at), daemon=True
            )
            poller.start()
            restarted = time.monotonic()
            server.start(wait=180)
            poller.join(30)
            result["prefect_restart_seconds"] = time.monotonic() - restarted
            deadline = time.monotonic() + 120 + count / 10
            while time.monotonic() < deadline:
                done = server.request(
                    "POST", "flow_runs/count", {"flows": {"id": {"any_": [backlog_flow]}}}
                )
                if int(done) >= count:
                    break
                time.sleep(0.25)
            runs = server.flow_runs(backlog_flow)
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
            after = asyncio.run(self._sequential_rate(server.port, direct_flow, count))
            result |= {
                "sequential_rate_before": before,
                "sequential_rate_after": after,
                "sequential_rate": (before + after) / 2,
            }
            result["ratio"] = result["drain_rate"] / result["sequential_rate"]
        finally:
            service.proc.stop()
        self.data["issue9"] = result

    async def _sequential_rate(self, port: int, flow_id: str, count: int) -> float:
        nonce = self.next_nonce()
        connection = await Connection.open(port)
        try:
            started = time.perf_counter()
            for i in range(count):
                body = {
                    "name": "erathos_run_orders",
                    "flow_id": flow_id,
                    "idempotency_key": execution_id(nonce, i),
                }
                answer = await connection.post_json("/api/flow_runs/", body, API_VERSION_HEADER)
                if answer.status != 201:
                    raise RuntimeError(f"create answered {answer.status}: {answer.body[:300]!r}")
            return count / (time.perf_counter() - started)
        finally:
            connection.close()

    # -- the table --------------------------------------------------------------------------

    def table(self) -> None:
        d = self.data
        ceiling_rps = float("nan")
        if "ingest_rounds" in d:
            rounds = d["ingest_rounds"]
            ceiling_rps = _mean(r["ceiling"]["rps"] for r in rounds)
        if "wrk_ceiling" in d:
            w = d["wrk_ceiling"]
            self.add(
                Row(
                    "0",
                    "load generator's own ceiling: wrk + Lua bodies -> asyncio sink",
                    f"{fmt(w['rps'])} req/s",
                    f"stack ceiling {fmt(ceiling_rps)} req/s",
                    f"{w['rps'] / ceiling_rps:.1f} x",
                    ">= 2 x ceiling",
                    w["rps"] >= 2 * ceiling_rps,
                )
            )
        if "ingest_rounds" in d:
            rounds = d["ingest_rounds"]
            crash = _mean(r["crash"]["rps"] for r in rounds)
            power = _mean(r["power"]["rps"] for r in rounds)
            wrk_cores = max(r[k]["wrk_cores"] for r in rounds for k in ("ceiling", "crash"))
            self.add(
                Row(
                    "1",
                    "ceiling: bare FastAPI, same uvicorn, parse JSON, 202",
                    f"{fmt(ceiling_rps)} req/s",
                    f"wrk used <= {wrk_cores:.2f} core",
                    "",
                    "",
                    None,
                ),
                Row(
                    "2",
                    "ingest, BRIDGE_DURABILITY=crash (sustained)",
                    f"{fmt(crash)} ev/s",
                    f"ceiling {fmt(ceiling_rps)} req/s",
                    f"{crash / ceiling_rps:.2f} x",
                    ">= 0.5 x",
                    crash / ceiling_rps >= 0.5,
                ),
                Row(
                    "2",
                    "ingest, BRIDGE_DURABILITY=power (sustained)",
                    f"{fmt(power)} ev/s",
                    f"ceiling {fmt(ceiling_rps)} req/s",
                    f"{power / ceiling_rps:.2f} x",
                    "",
                    None,
                ),
                Row(
                    "2",
                    "  CPU per event, service (crash) vs ceiling per request",
                    f"{cpu_ms(rounds, 'crash'):.2f} ms",
                    f"ceiling {cpu_ms(rounds, 'ceiling'):.2f} ms",
                    f"{cpu_ms(rounds, 'crash') / cpu_ms(rounds, 'ceiling'):.1f} x",
                    "",
                    None,
                ),
                Row(
                    "2",
                    "  delivered to fake Prefect during the crash window",
                    f"{fmt(_mean(r['crash']['delivered_in_window_per_s'] for r in rounds))} /s",
                    "",
                    "",
                    "",
                    None,
                ),
            )
        if "latency" in d:
            lat = d["latency"]
            for rate in ("200", "500"):
                x = lat[rate]
                clean = x["non_2xx"] == 0
                failed = ""
                if x["not_sent"]:
                    failed += f", {x['not_sent']} not sent (1,000 unanswered)"
                if x["loadgen_errors"]:
                    failed += ", failed: " + ", ".join(
                        f"{n} {name}" for name, n in x["loadgen_errors"].items()
                    )
                if other := x["non_2xx"] - x["not_sent"] - sum(x["loadgen_errors"].values()):
                    failed += f", {other} answered non-2xx"
                self.add(
                    Row(
                        "3",
                        f"accept latency at {rate} ev/s open loop (p50 / p99)",
                        f"{x['accept_ms']['p50']:.1f} / {x['accept_ms']['p99']:.1f} ms",
                        f"sent {fmt(x['sent_rate'], 1)}/s, lag p99 "
                        f"{x['schedule_lag_ms']['p99']:.2f} ms{failed}",
                        "",
                        "p99 <= 20 ms" if rate == "500" else "",
                        x["accept_ms"]["p99"] <= 20 and clean if rate == "500" else None,
                    )
                )
            e2e = lat["200"]["e2e_ms"]
            self.add(
                Row(
                    "4",
                    "end to end at 200 ev/s: POST -> fake Prefect (p50 / p99)",
                    f"{e2e['p50']:.1f} / {e2e['p99']:.1f} ms",
                    f"{lat['200']['delivered']} of {lat['200']['requests']} matched",
                    "",
                    "p50 <= 10, p99 <= 50 ms",
                    e2e["p50"] <= 10 and e2e["p99"] <= 50,
                )
            )
        if "overhead" in d:
            o = d["overhead"]
            self.add(
                Row(
                    "5",
                    "real Prefect: create via the service (median)",
                    f"{o['via_service_ms']['p50']:.1f} ms",
                    f"direct {o['direct_ms']['p50']:.1f} ms",
                    f"{o['ratio_p50']:.2f} x",
                    "<= 1.15 x",
                    o["ratio_p50"] <= 1.15,
                )
            )
        if "drain" in d:
            x = d["drain"]
            self.add(
                Row(
                    "6",
                    f"drain {fmt(x['backlog'])} after an outage, default concurrency",
                    f"{fmt(x['rate'])} deliveries/s",
                    f"first after up {x['first_after_up_s']:.1f} s",
                    "",
                    ">= 1,000 /s",
                    x["rate"] >= 1000 and x["delivered"] == x["backlog"],
                )
            )
        if "drain_capped" in d:
            x = d["drain_capped"]
            self.add(
                Row(
                    "6",
                    f"drain {fmt(x['backlog'])}, BRIDGE_MAX_RATE=100: sent mean / most in 1 s",
                    f"{x['sent_rate']:.1f} / {x['sent_max_in_1s']} per s",
                    f"arrived {x['rate']:.1f} / {x['max_in_1s']} per s",
                    "",
                    "<= cap (1 s: <= cap + 1)",
                    x["sent_rate"] <= 100 and x["sent_max_in_1s"] <= 101,
                )
            )
        peaks = [
            r[k]["peak_rss_mb"] for r in d.get("ingest_rounds", []) for k in ("crash", "power")
        ]
        peaks += [d[k]["peak_rss_mb"] for k in ("drain", "drain_capped") if k in d]
        if peaks:
            idle = d.get("ready", {}).get("hwm_mb_at_ready", [float("nan")])
            self.add(
                Row(
                    "7",
                    "peak RSS of the service during 2 and 6",
                    f"{max(peaks):.0f} MB",
                    f"at ready {percentile(idle, 50):.0f} MB",
                    "",
                    "<= 120 MB",
                    max(peaks) <= 120,
                )
            )
        if "ready" in d:
            t = d["ready"]["seconds"]
            self.add(
                Row(
                    "7",
                    f"start -> /readyz 200 (median / max of {len(t)})",
                    f"{percentile(t, 50):.2f} / {max(t):.2f} s",
                    "",
                    "",
                    "<= 2 s",
                    max(t) <= 2,
                )
            )
        if "issue9" in d and "ratio" in d["issue9"]:
            x = d["issue9"]
            complete = x["flow_runs"] == x["backlog"] == x["distinct_keys"]
            self.add(
                Row(
                    "8",
                    f"issue 9: drain {x['backlog']} into real Prefect (SQLite)",
                    f"{x['drain_rate']:.1f} runs/s",
                    f"sequential {x['sequential_rate']:.1f} runs/s "
                    f"(first 90 % drained at {x['rate_first_90_percent']:.1f}/s)",
                    f"{x['ratio']:.2f} x",
                    ">= 0.8 x",
                    x["ratio"] >= 0.8 and complete,
                ),
                Row(
                    "8",
                    "issue 9: health answered -> first flow run",
                    f"{x['first_delivery_after_health_s']:.1f} s",
                    f"503s {x['attempts'].get('503', 0)} of {sum(x['attempts'].values())} attempts",
                    "",
                    "<= 10 s",
                    x["first_delivery_after_health_s"] <= 10,
                ),
            )

    def contention(self) -> str:
        """How much the machine's other load got in the way: the service's share of wall
        time on a CPU and waiting for one, and how busy all cores were per phase."""
        d = self.data
        parts = []
        for label, x in (
            ("ingest", d.get("ingest_rounds", [{}])[-1].get("crash")),
            ("500 ev/s", d.get("latency", {}).get("500")),
            ("drain", d.get("drain")),
        ):
            if x and "service_runqueue_wait" in x:
                parts.append(
                    f"{label} {100 * x['service_on_cpu']:.0f}% on a CPU, "
                    f"{100 * x['service_runqueue_wait']:.0f}% waiting for one"
                )
        busy = ", ".join(
            f"{name.split(':')[0]} {x['machine_busy_cores']:.1f}" for name, x in self.load.items()
        )
        return f"service: {'; '.join(parts)}\nall cores busy (of {os.cpu_count()}) by phase: {busy}"

    def render(self) -> str:
        header = Row("#", "figure", "measured", "baseline (same run)", "ratio", "target", None)
        rows = [header, *self.rows]
        cells = [
            [r.number, r.figure, r.measured, r.baseline, r.ratio, r.target, r.result] for r in rows
        ]
        cells[0][-1] = "result"
        widths = [max(len(c[i]) for c in cells) for i in range(7)]
        lines = []
        for i, c in enumerate(cells):
            lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)


# -- helpers ---------------------------------------------------------------------------------


@contextmanager
def starved(proc: Proc, into: dict[str, Any]) -> Iterator[None]:
    """Note in ``into`` the share of the block's wall time the process spent on a CPU
    and runnable but waiting for one (the machine's other load)."""
    (run0, wait0), started = proc.sched(), time.monotonic()
    yield
    (run1, wait1), elapsed = proc.sched(), time.monotonic() - started
    into["service_on_cpu"] = (run1 - run0) / elapsed
    into["service_runqueue_wait"] = (wait1 - wait0) / elapsed


@contextmanager
def child_cpu() -> Iterator[Callable[[], float]]:
    """CPU seconds of the children reaped inside the block (one at a time here)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = [0.0]
    yield lambda: spent[0]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent[0] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``), for every process."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _first_ok(url: str, found: list[float]) -> None:
    """Poll a health URL every 20 ms for up to 5 minutes; note when it first answers 200."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if http_status(url, timeout=1) == 200:
            found.append(time.time())
            return
        time.sleep(0.02)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def cpu_ms(rounds: list[dict[str, Any]], kind: str) -> float:
    """CPU milliseconds the server spent per answered request (robust to other load)."""
    return _mean(1000 * r[kind]["server_cores"] / r[kind]["rps"] for r in rounds)


def _mean(values: Iterator[float] | Any) -> float:
    items = list(values)
    return sum(items) / len(items) if items else float("nan")


def _count(values: Iterator[str] | Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def machine() -> dict[str, Any]:
    model = "unknown"
    with suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    prefect_python = prefect_executable().parent / "python"
    prefect = subprocess.run(
        [str(prefect_python), "-c", "import importlib.metadata as m; print(m.version('prefect'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    git = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "uvicorn_loop": "uvloop" if find_spec("uvloop") else "asyncio",
        "uvicorn_http": "httptools" if find_spec("httptools") else "h11",
        "wrk": (wrk.stdout or wrk.stderr or " ").splitlines()[0].split(" Copyright")[0],
        "prefect": prefect.stdout.strip(),
        "git": git.stdout.strip(),
        "load_average_at_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (under 3 minutes)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, dbs)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (Debian: apt-get install wrk)")
        return 2
    plan = QUICK if args.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    bench = Bench(plan, work)
    started = time.monotonic()
    info = machine()
    bench.say(f"{plan.name} run; work directory {work}")
    bench.say(
        f"machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}, "
        f"{info['wrk']}, Prefect {info['prefect']}"
    )
    bench.phase("0: wrk's own ceiling", bench.wrk_ceiling)
    bench.phase("1+2: ceiling and ingest", bench.ingest)
    bench.phase("3+4: accept latency and end to end", bench.latency)
    bench.phase("6: backlog drain", bench.drain)
    bench.phase("6: backlog drain with a rate cap", bench.drain_capped)
    bench.phase("7: start to ready", bench.ready)
    bench.phase("5+8: real Prefect", bench.real_prefect)
    bench.table()
    table = bench.render()
    elapsed = time.monotonic() - started
    print()
    print(
        f"erathos-prefect-bridge bench ({plan.name}, {elapsed:.0f} s): {info['nproc']} x "
        f"{info['cpu']}, Python {info['python']}, SQLite {info['sqlite']}, uvicorn "
        f"{info['uvicorn_loop']}/{info['uvicorn_http']}, {info['wrk']} "
        f"(-t{WRK_THREADS} -c{WRK_CONNECTIONS}), Prefect {info['prefect']}, {info['git']}"
    )
    print(table)
    print(bench.contention())
    for name, error in bench.errors.items():
        print(f"phase failed: {name}: {error}")
    RESULTS.mkdir(exist_ok=True)
    latest = RESULTS / "latest.json"
    latest.write_text(
        json.dumps(
            {
                "plan": asdict(plan),
                "machine": info,
                "elapsed_seconds": elapsed,
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "rows": [asdict(r) | {"result": r.result} for r in bench.rows],
                "errors": bench.errors,
                "phases": bench.load,
                "data": bench.data,
            },
            indent=2,
            default=str,
        )
    )
    print(f"\nwritten: {latest.relative_to(ROOT)}")
    if args.keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bench.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())

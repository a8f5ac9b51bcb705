"""What every phase of the bench runs on: the plan, the service and fake Prefect processes,
the load generators, and the machine's own load, bundled in one ``Harness`` per run."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import resource
import sqlite3
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from bench.body import body_parts
from bench.client import Connection
from bench.databases import query, server_version
from bench.procs import ROOT, Proc, http_status, service_env, spawn, wait_ok
from tools.localprefect import free_port, prefect_executable

TOKEN = "bench-webhook-token-0123456789"  # noqa: S105 (a throwaway token for a local run)
FAKE_FLOW_ID = "00000000-0000-4000-8000-00000000f10f"
LUA = ROOT / "bench" / "webhook.lua"
WRK_THREADS = 1
WRK_CONNECTIONS = 32


@dataclass(frozen=True)
class Plan:
    name: str
    wrk_seconds: int  # 0, 1, 2: one measured wrk run
    warmup_seconds: int  # the wrk run before it
    rounds: int  # 1 and 2: rounds of ceiling, durable accept and ingest
    latency_seconds: float  # 3 and 4: each open-loop rate
    backlog: int  # 6: drained into the fake Prefect
    capped_backlog: int  # 6: the same with BRIDGE_MAX_RATE
    ready_starts: int  # 7
    prefect_samples: int  # 5: creates of each kind
    direct_creates: int  # 8: flow runs per measurement of Prefect's own rate
    sqlite_prefect_backlog: int  # 8: drained into Prefect on SQLite
    postgres_prefect_backlog: int  # 8: drained into Prefect on PostgreSQL
    replicas_backlog: int  # 9: accepted by one or two replicas, then drained
    replica_rounds: int  # 9: rounds of one replica then two (every other one: two, one)


FULL = Plan(
    name="full",
    wrk_seconds=10,
    warmup_seconds=2,
    rounds=3,
    latency_seconds=15.0,
    backlog=10_000,
    capped_backlog=1_500,
    ready_starts=5,
    prefect_samples=200,
    direct_creates=500,
    sqlite_prefect_backlog=300,
    postgres_prefect_backlog=2_000,
    replicas_backlog=6_000,
    replica_rounds=2,
)
QUICK = Plan(
    name="quick",
    wrk_seconds=4,
    warmup_seconds=1,
    rounds=1,
    latency_seconds=5.0,
    backlog=2_000,
    capped_backlog=400,
    ready_starts=3,
    prefect_samples=60,
    direct_creates=150,
    sqlite_prefect_backlog=300,
    postgres_prefect_backlog=600,
    replicas_backlog=2_000,
    replica_rounds=1,
)


@dataclass(frozen=True)
class Service:
    proc: Proc
    port: int
    database_url: str  # its store: a SQLite file of the work directory, or PostgreSQL
    ready_seconds: float

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        return query(self.database_url, sql)

    def deliveries(self) -> dict[str, int]:
        """Deliveries by state, read from the store (every replica's, on a shared one)."""
        rows = self._query("SELECT state, count(*) FROM deliveries GROUP BY state")
        return {str(state): int(count) for state, count in rows}

    def attempts_by_status(self) -> dict[str, int]:
        """Attempts by HTTP status, or by outcome when none came back (SQLite or PostgreSQL)."""
        status = "coalesce(CAST(status_code AS VARCHAR), outcome)"
        rows = self._query(f"SELECT {status}, count(*) FROM attempts GROUP BY 1")  # noqa: S608
        return {str(status): int(count) for status, count in rows}

    def answered_attempt_starts(self) -> list[float]:
        """When each attempt that Prefect answered was sent (``attempts.started_at``)."""
        rows = self._query("SELECT started_at FROM attempts WHERE status_code IS NOT NULL")
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


@dataclass(frozen=True)
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
class Harness:
    """One run: its plan, its work directory, and what the phases found (``data``, raw
    figures by phase), how each phase ended (``errors``) and how busy the machine was."""

    plan: Plan
    work: Path
    only: frozenset[str] = frozenset()  # the figures' numbers to measure; empty: all
    data: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    load: dict[str, dict[str, float]] = field(default_factory=dict)
    # Execution ids are unique per (nonce, counter): a random start and a step per load
    # keep any two loads, of this run or another, from sharing one.
    nonce: int = field(default_factory=lambda: random.getrandbits(30) << 2)
    body: tuple[str, str] = field(default_factory=body_parts)  # prefix, suffix (bench/body.py)

    def path(self, name: str) -> Path:
        return self.work / name

    def next_nonce(self) -> int:
        self.nonce = (self.nonce + 1) % (1 << 32)
        return self.nonce

    def wants(self, *numbers: str) -> bool:
        """Whether this run measures any of these figures (``--only``)."""
        return not self.only or not self.only.isdisjoint(numbers)

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
        self,
        tag: str,
        prefect_port: int,
        flow_id: str = FAKE_FLOW_ID,
        database_url: str | None = None,
        **settings: str,
    ) -> Service:
        """A fresh service process, ready: on a fresh SQLite file unless ``database_url``
        names a store (a replica's); ``settings`` as ``BRIDGE_*`` (``max_rate="100"`` is
        ``BRIDGE_MAX_RATE=100``)."""
        port = free_port()
        database_url = database_url or f"sqlite:///{self.path(f'{tag}.db')}"
        env = service_env(
            port=port,
            database_url=database_url,
            prefect_port=prefect_port,
            flow_id=flow_id,
            token=TOKEN,
            **settings,
        )
        proc = spawn(
            "service",
            ["-m", "app.cli", "serve"],
            self.path(f"{tag}-service.log"),
            env,
            self.work,
        )
        ready = wait_ok(f"http://127.0.0.1:{port}/readyz", proc, timeout=60)
        return Service(proc, port, database_url, ready)

    def wrk(self, port: int, path: str, seconds: int) -> dict[str, Any]:
        """One wrk run with bench/webhook.lua; requests/s, errors, and wrk's own CPU."""
        prefix, suffix = self.body
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
        """One run of bench/loadgen.py (``open ...`` or ``burst ...``) and its CPU seconds."""
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

    def bursts_together(
        self, ports: list[int], tag: str, count: int, concurrency: int
    ) -> list[dict[str, Any]]:
        """One ``burst`` load generator per port, ``count`` requests each over
        ``concurrency`` connections, all starting at the same moment (once every process
        has opened its connections); each one's result, with its start and end."""
        # Far enough ahead for every generator to start and connect (bench/README.md).
        at = time.monotonic() + 3.0
        procs, outs = [], []
        for i, port in enumerate(ports):
            out = self.path(f"{tag}-{i}-loadgen.json")
            args = ["-m", "bench.loadgen", "--port", str(port), "--token", TOKEN]
            args += ["--nonce", str(self.next_nonce()), "--out", str(out), "burst"]
            args += ["--count", str(count), "--concurrency", str(concurrency), "--at", str(at)]
            procs.append(spawn("loadgen", args, self.path(f"{tag}-{i}-loadgen.log")))
            outs.append(out)
        for proc in procs:
            if (code := proc.popen.wait(900)) != 0:
                raise RuntimeError(f"a load generator failed ({code}):\n{proc.tail()}")
        return [json.loads(out.read_text()) for out in outs]

    def phase(self, name: str, run: Callable[[Harness], None]) -> None:
        """Run one phase; a failure is reported and the next phase still runs. Notes how
        busy the whole machine was meanwhile (others' processes skew every figure)."""
        self.say(f"{name} ...")
        started = time.monotonic()
        busy0 = machine_busy_seconds()
        try:
            run(self)
        except Exception as exc:
            self.errors[name] = f"{type(exc).__name__}: {exc}"
            self.say(f"{name} FAILED: {exc}")
            traceback.print_exc()
        elapsed = time.monotonic() - started
        busy = (machine_busy_seconds() - busy0) / elapsed
        self.load[name] = {"seconds": elapsed, "machine_busy_cores": busy}
        self.say(f"{name} done in {elapsed:.0f} s (machine busy {busy:.2f} cores)")


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


def first_ok(url: str, found: list[float]) -> None:
    """Poll a health URL every 20 ms for up to 5 minutes; note when it first answers 200
    (wall clock, in ``found``: meant for a thread of its own)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if http_status(url, timeout=1) == 200:
            found.append(time.time())
            return
        time.sleep(0.02)


def machine() -> dict[str, Any]:
    """What the figures depend on besides the code: hardware, versions, commit, load."""
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
        "postgresql": server_version(),
        "uvicorn_loop": "uvloop" if find_spec("uvloop") else "asyncio",
        "uvicorn_http": "httptools" if find_spec("httptools") else "h11",
        "wrk": (wrk.stdout or wrk.stderr or " ").splitlines()[0].split(" Copyright")[0],
        "prefect": prefect.stdout.strip(),
        "git": git.stdout.strip(),
        "load_average_at_start": os.getloadavg(),
    }

"""The processes of a bench run (service, ceiling app, fake Prefect, load generators),
how long they take to answer, and what they cost (RSS and CPU from ``/proc``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def instrument_priority() -> None:
    """Run a measuring process (load generator, fake Prefect) ahead of ordinary processes
    when allowed: they need little CPU, but need it on time, or other load on the machine
    delays their timestamps instead of the service's answers. Ignored when not permitted."""
    with suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, -10)


def proc_status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` line of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a live process (``/proc/<pid>/stat``)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime: fields 14 and 15


def group_cpu_seconds(pgid: int) -> float:
    """User plus system CPU time of the live processes of one process group (a server
    started in a session of its own, with whatever children it runs)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # pgrp: field 5
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def sched_seconds(pid: int) -> tuple[float, float]:
    """(on a CPU, runnable but waiting for one) since start, summed over the process's
    threads (``/proc/<pid>/task/*/schedstat``): the wait shows other load on the machine."""
    running = waiting = 0
    for path in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            on_cpu, queued, _ = path.read_text().split()
        except (OSError, ValueError):
            continue
        running += int(on_cpu)
        waiting += int(queued)
    return running / 1e9, waiting / 1e9


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float  # time.monotonic() just before the process was started

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def hwm_mb(self) -> float | None:
        kb = proc_status_kb(self.pid, "VmHWM")
        return kb / 1024 if kb is not None else None

    def cpu(self) -> float:
        return cpu_seconds(self.pid) or 0.0

    def sched(self) -> tuple[float, float]:
        return sched_seconds(self.pid)

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (a graceful stop), then SIGKILL after ``timeout``."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def spawn(
    name: str, args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Proc:
    """``python -m ...`` of this virtual environment, output to ``log``."""
    environment = dict(env if env is not None else os.environ)
    environment["PYTHONPATH"] = str(ROOT)
    with open(log, "ab") as out:
        started = time.monotonic()
        popen = subprocess.Popen(
            [sys.executable, *args],
            env=environment,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, popen, log, started)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (127.0.0.1)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def wait_ok(url: str, proc: Proc | None, timeout: float = 60.0, every: float = 0.005) -> float:
    """Poll ``url`` until it answers 200; the time from the process's start (or from now)."""
    started = proc.started if proc is not None else time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        if http_status(url) == 200:
            return time.monotonic() - started
        time.sleep(every)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s")


def service_env(
    *,
    port: int,
    database_url: str,
    prefect_port: int,
    flow_id: str,
    token: str,
    **settings: str,
) -> dict[str, str]:
    """The shipped defaults, plus what the bench must set (as ``BRIDGE_*`` names)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BRIDGE_"))}
    env |= {
        "BRIDGE_PORT": str(port),
        "BRIDGE_DATABASE_URL": database_url,
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "PREFECT_FLOW_ID": flow_id,
        "BRIDGE_WEBHOOK_TOKEN": token,
    }
    env |= {f"BRIDGE_{name.upper()}": value for name, value in settings.items()}
    return env


@dataclass
class Sampler:
    """Samples VmRSS of some processes every ``every`` seconds, in a thread."""

    procs: list[Proc]
    every: float = 0.05
    peak_kb: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def _sample(self) -> None:
        for proc in self.procs:
            for key in ("VmRSS", "VmHWM"):
                kb = proc_status_kb(proc.pid, key)
                if kb is not None:
                    self.peak_kb[proc.name] = max(self.peak_kb.get(proc.name, 0), kb)

    def peak_mb(self, name: str) -> float:
        return self.peak_kb.get(name, 0) / 1024

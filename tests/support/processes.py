"""Real service processes for the crash, replica and restart tests, and what those tests
ask of them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.paths import ROOT
from tests.support.tokens import ADMIN_TOKEN, TOKEN
from tests.support.waiting import eventually, settled
from tools.localprefect import free_port


def clean_environment(**settings: str) -> dict[str, str]:
    """The current environment without any Prefect or bridge setting, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BRIDGE_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(settings)
    return env


def fast_service_environment(
    api_url: str, flow_id: str, database_url: str, **settings: str
) -> dict[str, str]:
    """A service on a port of its own, with timings short enough for a test to watch
    leases run out and retries come round, logging JSON; ``settings`` on top."""
    return clean_environment(
        PREFECT_API_URL=api_url,
        PREFECT_FLOW_ID=flow_id,
        BRIDGE_WEBHOOK_TOKEN=TOKEN,
        BRIDGE_ADMIN_TOKEN=ADMIN_TOKEN,
        BRIDGE_PORT=str(free_port()),
        BRIDGE_DATABASE_URL=database_url,
        BRIDGE_PREFECT_TIMEOUT="2s",
        BRIDGE_LEASE="3s",
        BRIDGE_POLL_INTERVAL="200ms",
        BRIDGE_RETRY_BASE="200ms",
        BRIDGE_RETRY_CAP="2s",
        BRIDGE_LOG_FORMAT="json",
        **settings,
    )


@dataclass
class ServiceProcess:
    """``erathos-prefect-bridge serve`` as its own process, in its own session."""

    env: dict[str, str]
    workdir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['BRIDGE_PORT']}"

    def start(self, wait: float = 30.0) -> None:
        """Spawn it and wait until it is ready, for synchronous callers."""
        self.spawn()
        self.wait_ready(wait)

    async def launch(self, within: float = 30.0) -> None:
        """Spawn it and wait until it is ready, for asynchronous callers."""
        self.spawn()
        await self.ready(within)

    def spawn(self) -> None:
        """Start the process without waiting (several replicas start at once)."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve"],
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def ready(self, within: float = 30.0) -> None:
        """Wait until ``/readyz`` answers 200; fail at once, with the end of its log, if
        the process exits first."""
        process = self.process
        assert process is not None

        async def answers_ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"the service exited: {self.log_path.read_text()[-2000:]}")
            return await readiness(self) == 200

        await eventually(answers_ready, within=within, what=f"{self.url}/readyz 200")

    def wait_ready(self, wait: float = 30.0) -> None:
        """:meth:`ready` for synchronous callers: in an event loop of its own, on a thread
        of its own (the caller's thread may be running a loop already)."""
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, self.ready(wait)).result()

    def client(self) -> httpx.AsyncClient:
        """An HTTP client for the process's API (its admin API takes ADMIN_TOKEN)."""
        return httpx.AsyncClient(base_url=self.url, timeout=10)

    async def settled(self, within: float) -> None:
        """Wait until none of its events has a pending delivery."""
        async with self.client() as client:
            await settled(client, within=within)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGKILL)
            self.process.wait()


def acknowledged(path: Path) -> list[str]:
    """The execution ids a burst client wrote down as acknowledged."""
    return path.read_text().split() if path.exists() else []


async def readiness(service: ServiceProcess) -> int:
    """The status ``/readyz`` answers with; 0 when nothing answers."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(f"{service.url}/readyz")).status_code
    except httpx.HTTPError:
        return 0


def burst(
    services: list[ServiceProcess], token: str, work: Path, count: int, **options: str
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """Start ``tests.support.burst_client`` in its own process against the services; it writes
    the acknowledged execution ids and every answer to the two returned files."""
    acked, answers = work / "acked.txt", work / "answers.txt"
    extra = [part for key, value in options.items() for part in (f"--{key}", value)]
    urls = ",".join(s.url for s in services)
    command = [sys.executable, "-m", "tests.support.burst_client", "--urls", urls, "--token", token]
    command += ["--count", str(count), "--acked", str(acked), "--answers", str(answers), *extra]
    client = subprocess.Popen(command, cwd=ROOT, env=clean_environment())
    return client, acked, answers

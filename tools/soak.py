"""Soak: the service under a steady load for a while, with Prefect flapping, answering 503
and 429 at random, and a service restart in the middle. At the end every acknowledged
event must be exactly one flow run, and memory must be flat.

    .venv/bin/python -m tools.soak [--minutes 10] [--rate 20]

Not a unit test: it runs for minutes and prints a report (and writes soak-report.json in
its work directory). Everything runs on this machine (127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.support.erathos import webhook_body
from tests.support.faults import FaultProxy
from tests.support.processes import ServiceProcess, clean_environment
from tools.localprefect import PrefectServer, free_port

TOKEN = "soak-webhook-token-0123456789"
ADMIN = "soak-admin-token-0123456789"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Soak:
    def __init__(self, minutes: float, rate: float, chaos: float, work: Path) -> None:
        self.duration = minutes * 60
        self.rate = rate
        self.chaos = chaos
        self.work = work
        self.acked: list[str] = []
        self.refused: Counter[str] = Counter()
        self.memory: list[tuple[float, float]] = []
        self.timeline: list[str] = []

    def note(self, what: str) -> None:
        line = f"{time.monotonic() - self.started:7.1f} s  {what}"
        self.timeline.append(line)
        print(line, flush=True)

    async def run(self) -> dict[str, Any]:
        self.started = time.monotonic()
        self.prefect = PrefectServer.launch(home=self.work / "prefect")
        flow_id = self.prefect.create_flow("soak")
        self.proxy = FaultProxy(f"http://127.0.0.1:{self.prefect.port}", stall=0)
        await self.proxy.start()
        env = clean_environment(
            PREFECT_API_URL=f"{self.proxy.url}/api",
            PREFECT_FLOW_ID=flow_id,
            BRIDGE_WEBHOOK_TOKEN=TOKEN,
            BRIDGE_ADMIN_TOKEN=ADMIN,
            BRIDGE_PORT=str(free_port()),
            BRIDGE_DATABASE_URL=f"sqlite:///{self.work / 'bridge.db'}",
            BRIDGE_LOG_FORMAT="json",
            BRIDGE_LOG_LEVEL="WARNING",
            # Faster than shipped, so a 10-minute soak sees many retries and recoveries.
            BRIDGE_RETRY_BASE="1s",
            BRIDGE_RETRY_CAP="20s",
        )
        self.service = ServiceProcess(env, self.work, self.work / "service.log")
        self.service.start()
        self.note(f"service ready at {self.service.url}; Prefect at {self.prefect.api_url}")
        try:
            self.proxy.chaos = self.chaos
            self.started = time.monotonic()
            await asyncio.gather(self._load(), self._events(), self._watch_memory())
            self.note("load finished; waiting for the backlog to drain")
            await self._drain()
            runs = Counter(r["idempotency_key"] for r in self.prefect.flow_runs(flow_id))
        finally:
            self.service.stop()
            await self.proxy.stop()
            self.prefect.stop()
        return self._report(runs)

    async def _load(self) -> None:
        """Open loop: one event every 1/rate s, whatever the answers."""
        async with httpx.AsyncClient(timeout=10) as client:
            pending: set[asyncio.Task[None]] = set()
            count = int(self.duration * self.rate)
            for i in range(count):
                await asyncio.sleep(max(0.0, self.started + i / self.rate - time.monotonic()))
                task = asyncio.create_task(self._send(client))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)

    async def _send(self, client: httpx.AsyncClient) -> None:
        body = webhook_body()
        body["execution_id"] = str(uuid.uuid4())
        try:
            response = await client.post(
                f"{self.service.url}/webhooks/erathos",
                json=body,
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
        except httpx.HTTPError as exc:
            self.refused[type(exc).__name__] += 1
            return
        if response.is_success:
            self.acked.append(body["execution_id"])
        else:
            self.refused[str(response.status_code)] += 1

    async def _events(self) -> None:
        """Prefect restarted at a third, the service restarted at a half, Prefect unreachable
        (connections reset) for a while at two thirds."""
        await self._at(self.duration / 3)
        self.note("stopping Prefect")
        await asyncio.to_thread(self.prefect.stop)
        await asyncio.sleep(15)
        await asyncio.to_thread(self.prefect.start)
        self.note("Prefect is back")
        await self._at(self.duration / 2)
        self.note("restarting the service (SIGTERM, then start)")
        self.service.signal(signal.SIGTERM)
        await asyncio.to_thread(self.service.wait, 30)
        await asyncio.to_thread(self.service.start)
        self.note("service is back")
        await self._at(2 * self.duration / 3)
        self.note("Prefect unreachable (connections reset) for 15 s")
        self.proxy.down = True
        await asyncio.sleep(15)
        self.proxy.down = False
        self.note("Prefect reachable again")

    async def _at(self, offset: float) -> None:
        await asyncio.sleep(max(0.0, self.started + offset - time.monotonic()))

    async def _watch_memory(self) -> None:
        end = self.started + self.duration
        while time.monotonic() < end:
            process = self.service.process
            if process is not None and process.poll() is None:
                with contextlib.suppress(OSError):
                    self.memory.append((time.monotonic() - self.started, rss_mb(process.pid)))
            await asyncio.sleep(5)

    async def _drain(self) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                response = await client.get(
                    f"{self.service.url}/events",
                    params={"state": "pending", "limit": 1},
                    headers={"Authorization": f"Bearer {ADMIN}"},
                )
                if response.status_code == 200 and not response.json()["events"]:
                    self.note("drained")
                    return
                await asyncio.sleep(1)
        self.note("NOT drained within 10 minutes")

    def _report(self, runs: Counter[str]) -> dict[str, Any]:
        acked = set(self.acked)
        lost = sorted(acked - set(runs))
        doubled = sorted(key for key, n in runs.items() if n > 1)
        samples = [mb for _, mb in self.memory]
        half = len(samples) // 2
        first, second = samples[:half] or [0.0], samples[half:] or [0.0]
        report = {
            "minutes": self.duration / 60,
            "offered_rate_per_s": self.rate,
            "acknowledged": len(acked),
            "not_acknowledged": dict(self.refused),
            "flow_runs": len(runs),
            "lost": len(lost),
            "doubled": len(doubled),
            "faults_injected": Counter(self.proxy.applied),
            "prefect_creations_answered": dict(self.proxy.creations),
            "rss_mb": {
                "first_half_median": round(statistics.median(first), 1),
                "second_half_median": round(statistics.median(second), 1),
                "max": round(max(samples, default=0.0), 1),
            },
            "timeline": self.timeline,
        }
        report["verdict"] = "pass" if not lost and not doubled else "FAIL"
        return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    parser.add_argument(
        "--chaos",
        type=float,
        default=0.03,
        help="chance that Prefect answers a create with 503/429",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    report = asyncio.run(Soak(args.minutes, args.rate, args.chaos, work).run())
    (work / "soak-report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "timeline"}, indent=2))
    print(f"report: {work / 'soak-report.json'}")
    return 0 if report["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())

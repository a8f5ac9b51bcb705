"""Following 1,000 flow runs: the requests to a real Prefect server per minute, and how
long until every run was looked at once (bench/README.md, "Following flow runs").

    .venv/bin/python -m bench.follow [--runs 1000] [--seconds 120] [--interval 5]

A real Prefect server (tools.localprefect, SQLite), ``--runs`` flow runs made there and
stored as delivered deliveries of their own events, then the service's resources
(``open_bridge``: the dispatcher and the follower) for ``--seconds`` at
BRIDGE_FOLLOW_INTERVAL ``--interval``. Halfway, half the runs are moved to COMPLETED in
Prefect: they stop being followed. The requests are the follower's own count
(``erathos_bridge_follow_requests_total``), one per request sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from app.config import PREFECT_API_VERSION, Settings
from app.service import Bridge, open_bridge
from app.storage.database import Database
from app.storage.records import (
    AttemptRecord,
    DeliveryState,
    DeliveryUpdate,
    NewDelivery,
    NewEvent,
    RunState,
)
from app.storage.schema import deliveries
from app.storage.store import Store
from tools.localprefect import PrefectServer

OWNER = "bench"


async def make_runs(api_url: str, flow_id: str, count: int) -> list[str]:
    """``count`` PENDING flow runs, one after another (a Prefect server on SQLite answers
    concurrent creates 503)."""
    headers = {"x-prefect-api-version": PREFECT_API_VERSION}
    async with httpx.AsyncClient(base_url=f"{api_url}/", headers=headers, timeout=30) as client:

        async def some(share: int) -> list[str]:
            made = []
            for _ in range(share):
                answer = await client.post("flow_runs/", json={"flow_id": flow_id})
                answer.raise_for_status()
                made.append(str(answer.json()["id"]))
            return made

        return await some(count)


async def store_delivered(database_url: str, run_ids: list[str]) -> None:
    """Each run as the dispatcher leaves it: a delivered delivery, followed from now on."""
    database = await Database.open(database_url)
    store = Store(database)
    try:
        for run_id in run_ids:
            execution_id = str(uuid.uuid4())
            new = NewEvent(
                execution_id,
                {"execution_id": execution_id},
                [NewDelivery("dbt", "default", execution_id)],
            )
            [made] = (await store.record_event(new, claim_for=OWNER, lease_seconds=60)).deliveries
            now = store.clock()
            attempt = AttemptRecord(0, made.id, 1, now, 1.0, "delivered", 201, None, None, None)
            update = DeliveryUpdate(
                DeliveryState.DELIVERED, 201, None, flow_run_id=run_id, finished_at=now
            )
            await store.complete_attempt(attempt, update, OWNER)
    finally:
        await database.close()


def requests_sent(bridge: Bridge) -> float:
    total = 0.0
    for status in ("2xx", "4xx", "5xx", "error"):
        value = bridge.metrics.registry.get_sample_value(
            "erathos_bridge_follow_requests_total", {"connection": "default", "status": status}
        )
        total += value or 0.0
    return total


async def looked_at(bridge: Bridge) -> int:
    query = select(func.count()).where(deliveries.c.run_state.is_not(None))
    return int(await bridge.runs.database.run(lambda conn: conn.scalar(query) or 0))


async def measure(runs: int, seconds: float, interval: float) -> dict[str, Any]:
    server = PrefectServer.launch()
    work = Path(tempfile.mkdtemp(prefix="bench-follow-"))
    try:
        flow_id = server.create_flow("bench-follow")
        run_ids = await make_runs(server.api_url, flow_id, runs)
        database_url = f"sqlite:///{work / 'bridge.db'}"
        await store_delivered(database_url, run_ids)
        settings = Settings(
            _env_file=None,
            _secrets_dir=None,
            webhook_tokens="bench-webhook-token-0123456789",
            database_url=database_url,
            prefect_api_url=server.api_url,
            prefect_flow_id=flow_id,
            follow_interval=f"{interval}s",
        )
        all_seen_after = None
        completed = False
        samples = []
        async with open_bridge(settings) as bridge:
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < seconds:
                seen = await looked_at(bridge)
                if all_seen_after is None and seen >= runs:
                    all_seen_after = elapsed
                if not completed and elapsed >= seconds / 2:
                    completed = True
                    for run_id in run_ids[: runs // 2]:
                        body = {"state": {"type": "COMPLETED"}, "force": True}
                        await asyncio.to_thread(
                            server.request, "POST", f"flow_runs/{run_id}/set_state", body
                        )
                followed = (await bridge.runs.followed()).get("default", 0)
                samples.append((round(elapsed, 1), requests_sent(bridge), followed))
                await asyncio.sleep(1.0)
            sent = requests_sent(bridge)
            finals = await bridge.runs.final_counts(0.0)
        return {
            "runs": runs,
            "seconds": round(seconds, 1),
            "interval": interval,
            "requests": sent,
            "requests_per_minute": round(sent / seconds * 60, 1),
            "bound_per_minute": round(60 / interval, 1),
            "every_run_looked_at_after_s": round(all_seen_after, 1) if all_seen_after else None,
            "completed_seen": finals.get(RunState.COMPLETED, 0),
            "followed_at_end": samples[-1][2] if samples else None,
            "samples": samples[:: max(1, len(samples) // 12)],
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--interval", type=float, default=5.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.runs, args.seconds, args.interval)), indent=2))


if __name__ == "__main__":
    main()

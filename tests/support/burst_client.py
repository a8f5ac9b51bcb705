"""A separate client process: sends a burst of Erathos events and writes down, one per
line, the execution id of every event the service acknowledged (answered 2xx).

With several ``--url``s (or ``--urls a,b``) the events are spread over the replicas in
turn; ``--duplicates 0.1`` sends a tenth of them twice, to two different replicas at the
same moment (the id is written down once if either answered 2xx). ``--rate`` spreads
the burst over time; ``--answers`` records every answer as ``<execution id> <status>
<replica index>`` (status 0: no answer: refused, reset, timed out), in answer order.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from tests.support.erathos import webhook_body


async def burst(
    urls: list[str],
    token: str,
    count: int,
    concurrency: int,
    acked: Path,
    *,
    duplicates: float = 0.0,
    rate: float | None = None,
    answers: Path | None = None,
) -> None:
    limit = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    twice = set(random.sample(range(count), round(count * duplicates)))
    started = time.monotonic()
    with ExitStack() as files:
        out = files.enter_context(acked.open("a", buffering=1))
        log = files.enter_context(answers.open("a", buffering=1)) if answers else None
        async with httpx.AsyncClient(timeout=10) as client:

            async def post(replica: int, body: dict[str, str]) -> bool:
                try:
                    response = await client.post(
                        f"{urls[replica]}/webhooks/erathos", json=body, headers=headers
                    )
                except httpx.HTTPError:
                    status = 0  # not acknowledged: Erathos would see the failure
                else:
                    status = response.status_code
                if log is not None:
                    log.write(f"{body['execution_id']} {status} {replica}\n")
                return 200 <= status < 300

            async def send(i: int) -> None:
                body = webhook_body(table_name=f"t{i}")  # a new execution id each
                if rate is not None:
                    # Pacing, not waiting for an outcome: event i starts at i / rate s.
                    await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
                replicas = [i % len(urls)]
                if i in twice and len(urls) > 1:
                    replicas.append((i + 1) % len(urls))
                async with limit:
                    results = await asyncio.gather(*(post(r, body) for r in replicas))
                if any(results):
                    out.write(body["execution_id"] + "\n")

            await asyncio.gather(*(send(i) for i in range(count)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", action="append", default=[], help="a replica; repeatable")
    parser.add_argument("--urls", default="", help="comma-separated replicas")
    parser.add_argument("--token", required=True)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duplicates", type=float, default=0.0)
    parser.add_argument("--rate", type=float, default=None, help="events started per second")
    parser.add_argument("--acked", type=Path, required=True)
    parser.add_argument("--answers", type=Path, default=None)
    args = parser.parse_args()
    urls = [*args.url, *(u for u in args.urls.split(",") if u)]
    if not urls:
        parser.error("give at least one --url")
    asyncio.run(
        burst(
            urls,
            args.token,
            args.count,
            args.concurrency,
            args.acked,
            duplicates=args.duplicates,
            rate=args.rate,
            answers=args.answers,
        )
    )


if __name__ == "__main__":
    main()

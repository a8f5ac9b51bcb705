"""A separate client process: sends a burst of Erathos events and writes down, one per
line, the execution id of every event the service acknowledged (answered 2xx)."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path

import httpx

from tests.erathos import execution


async def burst(url: str, token: str, count: int, concurrency: int, acked: Path) -> None:
    limit = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    with acked.open("a", buffering=1) as out:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:

            async def send(i: int) -> None:
                body = {k.lower(): v for k, v in execution(table_name=f"t{i}").items()}
                body["execution_id"] = str(uuid.uuid4())
                async with limit:
                    try:
                        response = await client.post(
                            "/webhooks/erathos", json=body, headers=headers
                        )
                    except httpx.HTTPError:
                        return  # not acknowledged: Erathos would see the failure
                if response.is_success:
                    out.write(body["execution_id"] + "\n")

            await asyncio.gather(*(send(i) for i in range(count)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--acked", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(burst(args.url, args.token, args.count, args.concurrency, args.acked))


if __name__ == "__main__":
    main()

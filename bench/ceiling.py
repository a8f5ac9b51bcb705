"""The stack's ceiling: a bare FastAPI app that parses the same JSON body as the webhook
and answers 202, run by uvicorn with the same settings as ``erathos-prefect-bridge serve``
(``app.cli.serve.serve``: one process, uvicorn's default loop and HTTP implementation of this
virtual environment, no server header, uvicorn's proxy headers off, no logging configuration).

    python -m bench.ceiling --port 8099
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.config import Settings
from app.server.connections import ConnectionLimits, limited_http_protocol

app = FastAPI(title="bench-ceiling")


@app.post("/webhooks/erathos", status_code=202)
async def receive(request: Request) -> JSONResponse:
    payload: Any = json.loads(await request.body())
    return JSONResponse(
        {"status": "accepted", "execution_id": payload.get("execution_id")}, status_code=202
    )


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # Keep in step with app.cli.serve.serve: the same protocol and limits, at their defaults.
    defaults = Settings.model_fields
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        http=limited_http_protocol(
            ConnectionLimits(
                header_timeout=defaults["header_timeout"].default.total_seconds(),
                max_header_bytes=defaults["max_header_bytes"].default,
                max_connections=defaults["max_connections"].default,
                body_timeout=defaults["body_timeout"].default.total_seconds(),
                keepalive_timeout=defaults["keepalive_timeout"].default.total_seconds(),
            )
        ),
        log_config=None,
        proxy_headers=False,  # app.server.forwarded reads them, from trusted proxies only
        timeout_graceful_shutdown=10,
        server_header=False,
    )


if __name__ == "__main__":
    main()

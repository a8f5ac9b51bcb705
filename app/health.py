"""Liveness (``/healthz``), readiness (``/readyz``: the store commits; Prefect's state is
reported, never required) and Prometheus metrics (``/metrics``)."""

from __future__ import annotations

import asyncio
import time

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from app.auth import require_metrics_token
from app.errors import Unauthorized, responses
from app.metrics import CONTENT_TYPE
from app.prefect import Health
from app.records import StoreUnavailable
from app.service import BridgeDep

log = structlog.get_logger("erathos_prefect_bridge.api")

HEALTH_CACHE_SECONDS = 15.0
HEALTH_TIMEOUT_SECONDS = 3.0

health = APIRouter(tags=["health"])


class StoreStatus(BaseModel):
    writable: bool
    error: str | None = None


class PrefectStatus(BaseModel):
    connection: str
    api_url: str
    reachable: bool
    authorized: bool | None
    detail: str


class ReadyOut(BaseModel):
    ready: bool
    store: StoreStatus
    prefect: list[PrefectStatus]


@health.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health.get(
    "/readyz",
    response_model=ReadyOut,
    summary="Readiness: events can be stored now",
    description=(
        "503 only when the store cannot commit. Prefect's reachability and whether it "
        "accepts our credentials are reported but never make this fail: events are "
        "accepted and queued while Prefect is down."
    ),
    responses={503: {"model": ReadyOut, "description": "The store cannot commit"}},
)
async def readyz(request: Request, bridge: BridgeDep) -> JSONResponse:
    try:
        await bridge.store.check_writable()
        store = StoreStatus(writable=True)
    except StoreUnavailable as exc:
        store = StoreStatus(writable=False, error=str(exc))
    prefect = await _prefect_health(request, bridge)
    body = ReadyOut(ready=store.writable, store=store, prefect=prefect)
    return JSONResponse(body.model_dump(), status_code=200 if store.writable else 503)


async def _prefect_health(request: Request, bridge: BridgeDep) -> list[PrefectStatus]:
    cache: dict[str, tuple[float, Health]] = request.state.health_cache

    async def one(name: str) -> PrefectStatus:
        connection = bridge.connections[name]
        cached = cache.get(name)
        if cached is None or time.monotonic() - cached[0] > HEALTH_CACHE_SECONDS:
            try:
                result = await asyncio.wait_for(connection.health(), HEALTH_TIMEOUT_SECONDS)
            except TimeoutError:
                result = Health(False, None, f"no answer within {HEALTH_TIMEOUT_SECONDS:.0f} s")
            cached = (time.monotonic(), result)
            cache[name] = cached
        status = cached[1]
        return PrefectStatus(
            connection=name,
            api_url=connection.api_url,
            reachable=status.reachable,
            authorized=status.authorized,
            detail=status.detail,
        )

    return list(await asyncio.gather(*(one(name) for name in bridge.connections)))


@health.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    description=(
        "Prometheus text format, every name prefixed erathos_bridge_. With "
        "BRIDGE_METRICS_TOKEN set, 'Authorization: Bearer <token>' is required."
    ),
    dependencies=[Depends(require_metrics_token)],
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **responses(Unauthorized),
    },
)
async def metrics(bridge: BridgeDep) -> Response:
    try:
        await bridge.metrics.refresh(bridge.history, bridge.dispatcher.gates)
    except StoreUnavailable as exc:
        # The queue gauges keep their last values: a scrape never fails for the store.
        log.warning("queue gauges not refreshed", error=str(exc))
    return Response(bridge.metrics.exposition(), media_type=CONTENT_TYPE)

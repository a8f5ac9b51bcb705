"""Liveness (``/healthz``), readiness (``/readyz``: the store commits; Prefect's state and
each route's target are reported, never required) and Prometheus metrics (``/metrics``)."""

from __future__ import annotations

import asyncio

import structlog
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from app.auth import require_metrics_token
from app.errors import Unauthorized, responses
from app.metrics import CONTENT_TYPE
from app.probe import ConnectionReport, TargetState
from app.records import StoreUnavailable
from app.service import BridgeDep

log = structlog.get_logger("erathos_prefect_bridge.api")

HEALTH_TIMEOUT_SECONDS = 3.0  # a probe of Prefect that takes longer goes on behind

health = APIRouter(tags=["health"])


class StoreStatus(BaseModel):
    writable: bool
    error: str | None = None


class TargetStatus(BaseModel):
    route: str
    target: str
    state: TargetState
    id: str | None
    detail: str


class PrefectStatus(BaseModel):
    connection: str
    api_url: str
    reachable: bool
    authorized: bool | None
    detail: str
    targets: list[TargetStatus]

    @classmethod
    def of(cls, report: ConnectionReport) -> PrefectStatus:
        return cls(
            connection=report.connection,
            api_url=report.api_url,
            reachable=report.health.reachable,
            authorized=report.health.authorized,
            detail=report.health.detail,
            targets=[
                TargetStatus(
                    route=t.route, target=t.target, state=t.state, id=t.id, detail=t.detail
                )
                for t in report.targets
            ],
        )


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
        "503 only when the store cannot commit. Prefect's reachability, whether it "
        "accepts our credentials and whether each route's flow or deployment exists are "
        "reported but never make this fail: events are accepted and queued while Prefect "
        "is down."
    ),
    responses={503: {"model": ReadyOut, "description": "The store cannot commit"}},
)
async def readyz(bridge: BridgeDep) -> JSONResponse:
    try:
        await bridge.store.check_writable()
        store = StoreStatus(writable=True)
    except StoreUnavailable as exc:
        store = StoreStatus(writable=False, error=str(exc))
    reports = await asyncio.gather(
        *(bridge.prefect.report(name, within=HEALTH_TIMEOUT_SECONDS) for name in bridge.connections)
    )
    prefect = [PrefectStatus.of(report) for report in reports]
    body = ReadyOut(ready=store.writable, store=store, prefect=prefect)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if store.writable else 503)


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

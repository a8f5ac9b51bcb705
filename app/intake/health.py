"""Liveness (``/healthz``), readiness (``/readyz``: the store commits; Prefect's state and
each route's target are reported, never required) and Prometheus metrics (``/metrics``).

Anyone may ask ``/readyz`` whether the service is ready, and why not, as a reason code;
the details (Prefect's URL, connection, route and target names and ids, Prefect's own
words) only a caller with the metrics or the admin token."""

from __future__ import annotations

import asyncio
from enum import StrEnum

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from app.delivery.probe import ConnectionReport, TargetState
from app.errors import StoreUnavailable, Unauthorized, responses
from app.intake.auth import may_read_details, require_metrics_token
from app.metrics import CONTENT_TYPE
from app.service import BridgeDep

log = structlog.get_logger("erathos_prefect_bridge.intake.health")

HEALTH_TIMEOUT_SECONDS = 3.0  # a probe of Prefect that takes longer goes on behind

health_router = APIRouter(tags=["health"])


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


class Reason(StrEnum):
    """Why the service is not ready, or what Prefect lacks while it is: the first that holds."""

    STORE_UNAVAILABLE = "store_unavailable"  # not ready: events cannot be stored
    PREFECT_UNREACHABLE = "prefect_unreachable"  # events are accepted and queued
    PREFECT_CREDENTIALS_REFUSED = "prefect_credentials_refused"
    PREFECT_NOT_USABLE = "prefect_not_usable"  # it answers, but not as a Prefect API
    TARGET_UNKNOWN = "target_unknown"  # a route's flow or deployment does not exist
    TARGET_UNCHECKED = "target_unchecked"
    OK = "ok"


class ReadyBrief(BaseModel):
    """What anyone may know: ready or not, and the reason code."""

    ready: bool
    reason: Reason


class ReadyOut(ReadyBrief):
    """With the metrics or the admin token: what the reason is about."""

    store: StoreStatus
    prefect: list[PrefectStatus]


def reason_of(store: StoreStatus, reports: list[ConnectionReport]) -> Reason:
    if not store.writable:
        return Reason.STORE_UNAVAILABLE
    healths = [report.health for report in reports]
    states = {target.state for report in reports for target in report.targets}
    for reason, holds in (
        (Reason.PREFECT_UNREACHABLE, any(not h.reachable for h in healths)),
        (Reason.PREFECT_CREDENTIALS_REFUSED, any(h.authorized is False for h in healths)),
        (Reason.PREFECT_NOT_USABLE, any(h.authorized is None for h in healths)),
        (Reason.TARGET_UNKNOWN, TargetState.UNKNOWN in states),
        (Reason.TARGET_UNCHECKED, TargetState.UNCHECKED in states),
    ):
        if holds:
            return reason
    return Reason.OK


@health_router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health_router.get(
    "/readyz",
    response_model=ReadyOut | ReadyBrief,
    summary="Readiness: events can be stored now",
    description=(
        "503 only when the store cannot commit. Prefect's reachability, whether it "
        "accepts our credentials and whether each route's flow or deployment exists are "
        "reported (as the reason code) but never make this fail: events are accepted and "
        "queued while Prefect is down. The details (store and Prefect) only with "
        "'Authorization: Bearer <metrics or admin token>'; a wrong token is 401."
    ),
    responses={
        503: {"model": ReadyOut | ReadyBrief, "description": "The store cannot commit"},
        **responses(Unauthorized),
    },
)
async def readyz(request: Request, bridge: BridgeDep) -> JSONResponse:
    details = await may_read_details(request, bridge)
    try:
        await bridge.store.check_writable()
        store = StoreStatus(writable=True)
    except StoreUnavailable as exc:
        store = StoreStatus(writable=False, error=str(exc))
    reports = await asyncio.gather(
        *(bridge.prefect.report(name, within=HEALTH_TIMEOUT_SECONDS) for name in bridge.connections)
    )
    brief = ReadyBrief(ready=store.writable, reason=reason_of(store, list(reports)))
    body: ReadyBrief = brief
    if details:
        prefect = [PrefectStatus.of(report) for report in reports]
        body = ReadyOut(**brief.model_dump(), store=store, prefect=prefect)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if store.writable else 503)


@health_router.get(
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
        await bridge.metrics.refresh(
            bridge.history, bridge.dispatcher.status().values(), bridge.runs
        )
    except StoreUnavailable as exc:
        # The queue gauges keep their last values: a scrape never fails for the store.
        log.warning("queue gauges not refreshed", error=str(exc))
    return Response(bridge.metrics.exposition(), media_type=CONTENT_TYPE)

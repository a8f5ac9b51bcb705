"""The HTTP API: the Erathos webhook, liveness, readiness and metrics.

A webhook travels: authenticated (constant-time token check) -> size-capped
and parsed -> validated as an :class:`ErathosEvent` -> routed -> stored with its
deliveries in one transaction -> delivered at once, waiting at most
``BRIDGE_SYNC_WAIT`` for Prefect's answer before saying "queued".
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, SecretStr

from app.dispatcher import Delivered
from app.errors import (
    BridgeError,
    InvalidBody,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
    responses,
    validated,
)
from app.event import ErathosEvent
from app.metrics import CONTENT_TYPE, DUPLICATE, NO_ROUTE
from app.prefect import Health
from app.service import Bridge
from app.settings import Settings
from app.store import DEAD, DELIVERED, Claim, DeliveryRecord, EventRecord, NewDelivery, Recorded
from app.store import StoreUnavailable as StoreDown

log = structlog.get_logger("erathos_prefect_bridge.api")

HEALTH_CACHE_SECONDS = 15.0
HEALTH_TIMEOUT_SECONDS = 3.0


async def get_bridge(request: Request) -> Bridge:
    bridge: Bridge = request.state.bridge
    return bridge


BridgeDep = Annotated[Bridge, Depends(get_bridge)]


def bearer_token(request: Request) -> bytes | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode()


def matching_token(presented: bytes | None, accepted: Sequence[SecretStr]) -> int | None:
    """The index of the accepted token presented, or None. Every token is compared, each
    as a SHA-256 digest in constant time, so neither content nor length leaks in timing."""
    offered = hashlib.sha256(presented or b"").digest()
    found = None
    for index, token in enumerate(accepted):
        expected = hashlib.sha256(token.get_secret_value().encode()).digest()
        if hmac.compare_digest(offered, expected) and presented is not None:
            found = index
    return found


def token_matches(presented: bytes | None, accepted: Sequence[SecretStr]) -> bool:
    return matching_token(presented, accepted) is not None


async def require_webhook_token(request: Request, bridge: BridgeDep) -> None:
    """401 without one of the webhook tokens; 429 past BRIDGE_RATE_LIMIT for that token,
    before anything is read or stored."""
    index = matching_token(bearer_token(request), bridge.settings.webhook_tokens)
    if index is None:
        raise Unauthorized()
    if bridge.limiter is not None and (wait := bridge.limiter.retry_after(index)) is not None:
        raise TooManyRequests(
            f"more than {bridge.limiter.rate:g} requests per second for this token",
            headers={"Retry-After": str(wait)},
        )


async def count_event(bridge: BridgeDep) -> AsyncIterator[None]:
    """Count a webhook request as received, and as rejected by the error it is answered
    with (listed before the token check, so a refused token is counted too)."""
    bridge.metrics.received.inc()
    try:
        yield
    except BridgeError as exc:
        bridge.metrics.reject(exc.code)
        raise


class DeliveryOut(BaseModel):
    """One target of the event: a flow run, or why there is none (yet)."""

    id: str
    route: str
    state: Literal["pending", "delivered", "dead"]
    attempts: int
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    error: str | None = None
    next_attempt_at: float | None = None

    @classmethod
    def of(cls, d: DeliveryRecord) -> Self:
        return cls(
            id=d.id,
            route=d.route,
            state=d.state,
            attempts=d.attempts,
            flow_run_id=d.flow_run_id,
            flow_run_url=d.flow_run_url,
            error=d.last_error,
            next_attempt_at=d.next_attempt_at if d.state == "pending" else None,
        )


class WebhookOut(BaseModel):
    event_id: str
    execution_id: str
    duplicate: bool
    status: Literal["delivered", "queued", "failed", "ignored"]
    reason: str | None = None
    deliveries: list[DeliveryOut]


def describe(event: EventRecord, found: Sequence[DeliveryRecord], *, duplicate: bool) -> WebhookOut:
    states = {d.state for d in found}
    status: Literal["delivered", "queued", "failed", "ignored"]
    if not found:
        status = "ignored"
    elif DEAD in states:
        status = "failed"
    elif states == {DELIVERED}:
        status = "delivered"
    else:
        status = "queued"
    return WebhookOut(
        event_id=event.id,
        execution_id=event.execution_id,
        duplicate=duplicate,
        status=status,
        reason=event.ignored_reason,
        deliveries=[DeliveryOut.of(d) for d in found],
    )


async def read_json_body(request: Request, settings: Settings) -> Any:
    """The body as JSON: 415 unless JSON, 413 past BRIDGE_MAX_BODY_BYTES (declared or
    streamed), 408 when it does not arrive within BRIDGE_BODY_TIMEOUT (slow clients)."""
    limit = settings.max_body_bytes
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType("the body must be JSON (Content-Type: application/json)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(settings.body_timeout.total_seconds()):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    except TimeoutError:
        raise RequestTimeout("the body did not arrive in time") from None
    try:
        parsed = json.loads(body, object_pairs_hook=_no_duplicate_keys)
        # What parses must also store: a lone surrogate ("\ud800") or nesting just under
        # the parser's limit would otherwise fail later, in the store, as a 500.
        json.dumps(parsed, ensure_ascii=False).encode()
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise InvalidBody(f"the body is not valid JSON: {_short(exc)}") from None
    return parsed


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:64]!r}")
        result[key] = value
    return result


def _short(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).split("\n")[0][:200]


webhooks = APIRouter(tags=["webhooks"])


@webhooks.post(
    "/webhooks/erathos",
    status_code=202,
    response_model=WebhookOut,
    summary="Receive an Erathos job-completion webhook",
    description=(
        "Stores the event durably, then creates one Prefect flow run per matching route. "
        "202: stored (the deliveries say whether the flow run already exists). 200: this "
        "execution_id was received before; the answer repeats its outcome and nothing new "
        "is created."
    ),
    responses={
        200: {"model": WebhookOut, "description": "A repeated execution_id"},
        **responses(
            InvalidBody,
            Unauthorized,
            RequestTimeout,
            TooManyRequests,
            PayloadTooLarge,
            UnsupportedMediaType,
            ValidationFailed,
            ServiceUnavailable,
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ErathosEvent.model_json_schema()}},
        }
    },
)
async def receive_erathos_webhook(request: Request) -> Any:
    # count_event and require_webhook_token called in line, not as dependencies: on the
    # hottest route FastAPI's dependency resolution cost more CPU than they do.
    bridge = await get_bridge(request)
    bridge.metrics.received.inc()
    try:
        await require_webhook_token(request, bridge)
        payload = await read_json_body(request, bridge.settings)
        return await accept_event(bridge, validated(ErathosEvent, payload), payload)
    except BridgeError as exc:
        bridge.metrics.reject(exc.code)
        raise


async def accept_event(bridge: Bridge, event: ErathosEvent, payload: dict[str, Any]) -> Any:
    """Route, store and start delivering one event; the webhook's answer."""
    decision = bridge.router.decide(event)
    new = [
        NewDelivery(
            route.name, route.connection, bridge.router.idempotency_key(event.execution_id, route)
        )
        for route in decision.routes
    ]
    recorded, outcomes = await store_and_deliver(
        bridge,
        Incoming(
            execution_id=event.execution_id,
            payload=payload,
            job_id=str(event.job_id) if event.job_id else None,
            schema_name=event.schema_name,
            table_name=event.table_name,
            status=event.status,
            ignored_reason=decision.reason,
        ),
        new,
    )
    if not recorded.created:
        return JSONResponse(
            describe(recorded.event, recorded.deliveries, duplicate=True).model_dump(), 200
        )
    found = [o.delivery if o else d for o, d in zip(outcomes, recorded.deliveries, strict=True)]
    return describe(recorded.event, found, duplicate=False)


@dataclass(frozen=True)
class Incoming:
    """What is stored of one incoming request (an Erathos event, or a Prefect-shaped one)."""

    execution_id: str
    payload: dict[str, Any]
    job_id: str | None = None
    schema_name: str | None = None
    table_name: str | None = None
    status: str | None = None
    ignored_reason: str | None = None


async def store_and_deliver(
    bridge: Bridge, incoming: Incoming, new: list[NewDelivery]
) -> tuple[Recorded, list[Delivered | None]]:
    """Commit the event and its deliveries (503 if that fails: nothing is acknowledged),
    then try the new deliveries at once, waiting up to BRIDGE_SYNC_WAIT for Prefect.
    The outcomes are None for deliveries not finished (or not started) within the wait."""
    start_now = all(bridge.dispatcher.starts_now(d.connection) for d in new)
    try:
        recorded = await bridge.store.record_event(
            incoming.execution_id,
            incoming.payload,
            job_id=incoming.job_id,
            schema_name=incoming.schema_name,
            table_name=incoming.table_name,
            status=incoming.status,
            new_deliveries=new,
            ignored_reason=incoming.ignored_reason,
            claim_for=bridge.dispatcher.owner if start_now else None,
            lease_seconds=bridge.dispatcher.lease,
        )
    except StoreDown as exc:
        log.error(
            "event not stored, answered 503", execution_id=incoming.execution_id, error=str(exc)
        )
        raise ServiceUnavailable() from None
    if not recorded.created:
        message = "duplicate event"
        bridge.metrics.reject(DUPLICATE)
    elif not recorded.deliveries:
        message = "event ignored"
        bridge.metrics.reject(NO_ROUTE)
    else:
        message = "event accepted"
        bridge.metrics.accepted.inc()
    log.info(
        message,
        execution_id=incoming.execution_id,
        event_id=recorded.event.id,
        job_id=incoming.job_id,
        table_name=incoming.table_name,
        status=incoming.status,
        routes=[d.route for d in recorded.deliveries],
        connections=sorted({d.connection for d in recorded.deliveries}),
        reason=recorded.event.ignored_reason,
    )
    outcomes: list[Delivered | None] = [None] * len(recorded.deliveries)
    if recorded.created and not start_now:
        for delivery in recorded.deliveries:
            bridge.dispatcher.queued(delivery.connection)
    if recorded.created and recorded.deliveries and start_now:
        tasks = bridge.dispatcher.submit(Claim(d, recorded.event) for d in recorded.deliveries)
        await asyncio.wait(tasks, timeout=bridge.settings.sync_wait.total_seconds())
        outcomes = [_finished(task) for task in tasks]
    return recorded, outcomes


def _finished(task: asyncio.Task[Delivered]) -> Delivered | None:
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()
    return None


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
    except StoreDown as exc:
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


async def require_metrics_token(request: Request, bridge: BridgeDep) -> None:
    token = bridge.settings.metrics_token
    if token is not None and not token_matches(bearer_token(request), [token]):
        raise Unauthorized("a valid 'Authorization: Bearer <metrics token>' is required")


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
        await bridge.metrics.refresh(bridge.store, bridge.dispatcher.gates)
    except StoreDown as exc:
        # The queue gauges keep their last values: a scrape never fails for the store.
        log.warning("queue gauges not refreshed", error=str(exc))
    return Response(bridge.metrics.exposition(), media_type=CONTENT_TYPE)

"""Prefect-shaped endpoints, so Erathos webhooks made from Erathos's own Prefect template
switch to this service by changing only ``prefect_api_url`` (to this service's host)
and the ``prefect_api_key`` secret (to this service's webhook token).

``POST /api/flow_runs/`` and ``POST /api/deployments/{id}/create_flow_run`` (also
under Prefect Cloud's ``/api/accounts/{a}/workspaces/{w}`` prefix) store the request
durably, keyed by its ``idempotency_key``, and forward it to the environment's Prefect
connection with the service's own credentials. The answer is Prefect's flow run JSON
when Prefect answered within ``BRIDGE_SYNC_WAIT``; otherwise 202 with the delivery.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import httpx
import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from app.auth import require_webhook_token
from app.errors import (
    InvalidBody,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
    responses,
    validated,
)
from app.ingest import WebhookOut, count_event, read_json_body, store_and_deliver
from app.records import DeliveryState, NewDelivery, NewEvent
from app.routes import DEFAULT_CONNECTION, DROP_IN_ROUTE
from app.service import Bridge, BridgeDep

log = structlog.get_logger("erathos_prefect_bridge.api")

# Prefect's idempotency key is required here: it is what deduplicates.
_KEY = Field(min_length=1, max_length=400)


class _PrefectBody(BaseModel):
    # Prefect refuses unknown fields (422); refusing them here keeps that error at the door.
    model_config = ConfigDict(extra="forbid")

    idempotency_key: str = _KEY
    name: str | None = Field(None, max_length=1024)
    parameters: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    tags: list[str] | None = None
    labels: dict[str, Any] | None = None
    work_queue_name: str | None = None
    job_variables: dict[str, Any] | None = None
    state: dict[str, Any] | None = None


class FlowRunCreate(_PrefectBody):
    """Prefect's ``POST /flow_runs/`` body, as the seed template sends it."""

    flow_id: UUID
    flow_version: str | None = None
    work_pool_name: str | None = None


class DeploymentFlowRunCreate(_PrefectBody):
    """Prefect's ``POST /deployments/{id}/create_flow_run`` body."""

    enforce_parameter_schema: bool | None = None


PREFIXES = ("/api", "/api/accounts/{account_id}/workspaces/{workspace_id}")

dropin = APIRouter(
    tags=["prefect-compatible"],
    dependencies=[Depends(count_event), Depends(require_webhook_token)],
    responses={
        200: {"description": "Prefect's flow run (this idempotency key was seen before)"},
        201: {"description": "Prefect's flow run, created now"},
        202: {"model": WebhookOut, "description": "Stored; Prefect had not answered yet"},
        **responses(
            InvalidBody,
            Unauthorized,
            PayloadTooLarge,
            UnsupportedMediaType,
            ValidationFailed,
            ServiceUnavailable,
        ),
    },
)


async def create_flow_run(request: Request, bridge: BridgeDep) -> Response:
    body = await _validated(request, bridge, FlowRunCreate)
    return await _forward(bridge, "flow_runs/", body)


async def create_deployment_flow_run(
    deployment_id: UUID, request: Request, bridge: BridgeDep
) -> Response:
    body = await _validated(request, bridge, DeploymentFlowRunCreate)
    return await _forward(bridge, f"deployments/{deployment_id}/create_flow_run", body)


def _body(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


for _prefix in PREFIXES:
    dropin.add_api_route(
        f"{_prefix}/flow_runs/",
        create_flow_run,
        methods=["POST"],
        summary="Create a flow run, as Prefect's own endpoint (drop-in for Erathos's template)",
        openapi_extra=_body(FlowRunCreate),
    )
    dropin.add_api_route(
        f"{_prefix}/deployments/{{deployment_id}}/create_flow_run",
        create_deployment_flow_run,
        methods=["POST"],
        summary="Create a flow run of a deployment, as Prefect's own endpoint",
        openapi_extra=_body(DeploymentFlowRunCreate),
    )


async def _validated(request: Request, bridge: Bridge, model: type[_PrefectBody]) -> dict[str, Any]:
    payload = await read_json_body(request, bridge.settings)
    return validated(model, payload).model_dump(mode="json", exclude_none=True)


async def _forward(bridge: Bridge, path: str, body: dict[str, Any]) -> Response:
    key: str = body["idempotency_key"]
    new = NewEvent(
        execution_id=key,
        payload={DROP_IN_ROUTE: {"path": path, "body": body}},
        deliveries=[NewDelivery(DROP_IN_ROUTE, DEFAULT_CONNECTION, key)],
        table_name=body.get("name"),
    )
    accepted = await store_and_deliver(bridge, new)
    if not accepted.created:
        # The key was seen before (here, or as an Erathos event's execution id).
        delivered = [
            turn.delivery
            for turn in accepted.turns
            if turn.delivery.state is DeliveryState.DELIVERED and turn.delivery.flow_run_id
        ]
        if len(delivered) == 1 and (found := await _flow_run(bridge, delivered[0].flow_run_id)):
            return Response(found, 200, media_type="application/json")
        return JSONResponse(accepted.answer().model_dump(mode="json"), 200)
    [turn] = accepted.turns
    answered = turn.result
    if answered and answered.response_body and turn.delivery.state is DeliveryState.DELIVERED:
        status = 201 if answered.created else 200
        return Response(answered.response_body, status, media_type="application/json")
    return JSONResponse(accepted.answer().model_dump(mode="json"), 202)


async def _flow_run(bridge: Bridge, flow_run_id: str | None) -> str | None:
    """Prefect's current JSON of a run we made before (a repeated request gets it too);
    None when Prefect cannot give it now (the caller answers with the delivery instead)."""
    connection = bridge.connections[DEFAULT_CONNECTION]
    try:
        response = await connection.get(f"flow_runs/{flow_run_id}")
    except (TimeoutError, httpx.HTTPError, httpx.InvalidURL) as exc:
        log.warning("flow run not read back from Prefect", flow_run_id=flow_run_id, error=str(exc))
        return None
    if not response.is_success:
        return None
    try:
        json.loads(response.text)
    except ValueError:
        return None
    return response.text

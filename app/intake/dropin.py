"""Prefect-shaped endpoints, so Erathos webhooks made from Erathos's own Prefect template
switch to this service by changing only ``prefect_api_url`` (to this service's host)
and the ``prefect_api_key`` secret (to this service's webhook token).

Off unless ``BRIDGE_DROPIN=true``. ``POST /api/flow_runs/`` and ``POST
/api/deployments/{id}/create_flow_run`` (also under Prefect Cloud's
``/api/accounts/{a}/workspaces/{w}`` prefix) then take a call only for the flows and
deployments the service is configured for (``PREFECT_FLOW_ID``, the routes file's
targets, ``BRIDGE_DROPIN_ALLOW``): the webhook token never starts just any deployment.
The request is stored durably, keyed by its target and its ``idempotency_key`` (as
Prefect deduplicates) apart from any Erathos execution id, and forwarded to the
environment's Prefect connection with the service's own credentials (a deployment's
run with a key that names the deployment: :func:`prefect_key`). The answer is Prefect's
own (the flow run, or its refusal) when Prefect answered within ``BRIDGE_SYNC_WAIT``;
otherwise 202 with the delivery.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import httpx
import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from app.config import DROPIN_GUARDED_FIELDS
from app.delivery.client import Outcome
from app.errors import (
    FieldError,
    Forbidden,
    InvalidBody,
    PayloadTooLarge,
    ServiceUnavailable,
    TargetUnverifiable,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
    responses,
    validated,
)
from app.intake.answers import WebhookOut
from app.intake.auth import require_webhook_token
from app.intake.ingest import count_event, store_and_deliver
from app.routing.router import DEFAULT_CONNECTION, DeploymentTarget, FlowTarget
from app.server.body import read_json_body
from app.service import Bridge, BridgeDep
from app.storage.records import DROP_IN_ROUTE, DeliveryState, NewDelivery, NewEvent, dropin_key

log = structlog.get_logger("erathos_prefect_bridge.intake.dropin")

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


async def create_flow_run(request: Request, bridge: BridgeDep) -> Response:
    body = await _validated(request, bridge, FlowRunCreate)
    flow_id = str(body["flow_id"])
    await _check_target(bridge, "flow", flow_id)
    return await _forward(bridge, "flow_runs/", body, kind="flow", target_id=flow_id)


async def create_deployment_flow_run(
    deployment_id: UUID, request: Request, bridge: BridgeDep
) -> Response:
    body = await _validated(request, bridge, DeploymentFlowRunCreate)
    await _check_target(bridge, "deployment", str(deployment_id))
    path = f"deployments/{deployment_id}/create_flow_run"
    return await _forward(bridge, path, body, kind="deployment", target_id=str(deployment_id))


def dropin_router(allowed_fields: Collection[str] = ()) -> APIRouter:
    """The endpoints, under both prefixes. Their documented bodies leave out the guarded
    fields ``allowed_fields`` does not list, as the endpoints refuse them."""
    router = APIRouter(
        tags=["prefect-compatible"],
        dependencies=[Depends(count_event), Depends(require_webhook_token)],
        responses={
            200: {"description": "Prefect's flow run (this idempotency key was seen before)"},
            201: {"description": "Prefect's flow run, created now"},
            202: {"model": WebhookOut, "description": "Stored; Prefect had not answered yet"},
            **responses(
                InvalidBody,
                Unauthorized,
                Forbidden,
                PayloadTooLarge,
                UnsupportedMediaType,
                ValidationFailed,
                ServiceUnavailable,
            ),
        },
    )
    for prefix in PREFIXES:
        router.add_api_route(
            f"{prefix}/flow_runs/",
            create_flow_run,
            methods=["POST"],
            summary="Create a flow run, as Prefect's own endpoint (drop-in for Erathos's template)",
            openapi_extra=_body(FlowRunCreate, allowed_fields),
        )
        router.add_api_route(
            f"{prefix}/deployments/{{deployment_id}}/create_flow_run",
            create_deployment_flow_run,
            methods=["POST"],
            summary="Create a flow run of a deployment, as Prefect's own endpoint",
            openapi_extra=_body(DeploymentFlowRunCreate, allowed_fields),
            responses=responses(TargetUnverifiable),
        )
    return router


def _body(model: type[BaseModel], allowed_fields: Collection[str]) -> dict[str, Any]:
    schema = model.model_json_schema()
    for guarded in DROPIN_GUARDED_FIELDS:
        if guarded not in allowed_fields:
            schema["properties"].pop(guarded, None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def _validated(request: Request, bridge: Bridge, model: type[_PrefectBody]) -> dict[str, Any]:
    payload = await read_json_body(request, bridge.settings)
    body = validated(model, payload).model_dump(mode="json", exclude_none=True)
    guarded = [f for f in DROPIN_GUARDED_FIELDS if f in body]
    refused = [f for f in guarded if f not in bridge.settings.dropin_allow_fields]
    if refused:
        why = "may change how or where the run executes: BRIDGE_DROPIN_ALLOW_FIELDS must list it"
        fields = [FieldError(field=field, message=why) for field in refused]
        raise ValidationFailed("not allowed: " + ", ".join(refused), fields=fields)
    return body


@dataclass(frozen=True)
class _Allowed:
    """The targets a drop-in call may name: by id, and by the names that resolve to ids."""

    ids: set[str] = field(default_factory=set)
    names: list[str] = field(default_factory=list)


def _allowed(bridge: Bridge) -> dict[str, _Allowed]:
    """The flows and deployments a drop-in call may target: what the environment's
    connection is configured to run (PREFECT_FLOW_ID or PREFECT_FLOW_NAME, the routes'
    targets), and what BRIDGE_DROPIN_ALLOW lists (a UUID there may be either kind of
    id; a ``flow/deployment`` name is a deployment's)."""
    allowed = {"flow": _Allowed(), "deployment": _Allowed()}
    for route in bridge.router.routes:
        if route.connection != DEFAULT_CONNECTION:
            continue
        target = route.target
        kind = allowed["flow" if isinstance(target, FlowTarget) else "deployment"]
        if isinstance(target, FlowTarget) and target.flow_id is not None:
            kind.ids.add(str(target.flow_id))
        elif isinstance(target, DeploymentTarget) and target.deployment_id is not None:
            kind.ids.add(str(target.deployment_id))
        elif target.name is not None:
            kind.names.append(target.name)
    if bridge.settings.prefect_flow_id is not None:
        allowed["flow"].ids.add(str(bridge.settings.prefect_flow_id))
    for listed in bridge.settings.dropin_allow:
        if "/" in listed:
            allowed["deployment"].names.append(listed)
        else:
            allowed["flow"].ids.add(listed)
            allowed["deployment"].ids.add(listed)
    return allowed


async def _check_target(bridge: Bridge, kind: str, target_id: str) -> None:
    """403 unless the flow or deployment is allowed by id, or by a name that resolves to
    it (looked up in Prefect once, then cached); 503 when a name cannot be looked up."""
    allowed = _allowed(bridge)[kind]
    if target_id in allowed.ids:
        return
    connection = bridge.connections[DEFAULT_CONNECTION]
    unreachable = False
    for name in allowed.names:
        if kind == "flow":  # a read: a request about to be refused creates nothing
            found, failure = await connection.find_flow(name)
        else:
            path = DeploymentTarget(name=name).name_path
            found, failure = await connection.resolve_deployment(path)
        if found == target_id:
            return
        unreachable |= failure is not None and failure.outcome is Outcome.TRANSIENT
    if unreachable:
        raise TargetUnverifiable(
            f"the {kind} could not be checked against the allowed {kind} names while "
            "Prefect is unreachable; nothing was stored: send it again, or allow it by id "
            "in BRIDGE_DROPIN_ALLOW"
        )
    raise Forbidden(
        f"{kind} {target_id} is not one this service starts: it is neither a configured "
        "target (PREFECT_FLOW_ID, PREFECT_FLOW_NAME, a route's) nor listed in "
        "BRIDGE_DROPIN_ALLOW"
    )


async def _forward(
    bridge: Bridge, path: str, body: dict[str, Any], *, kind: str, target_id: str
) -> Response:
    key: str = body["idempotency_key"]
    new = NewEvent(
        # As Prefect deduplicates: the same key for another flow is another run.
        execution_id=dropin_key(kind, target_id, key),
        payload={DROP_IN_ROUTE: {"path": path, "body": body}},
        deliveries=[
            NewDelivery(DROP_IN_ROUTE, DEFAULT_CONNECTION, prefect_key(kind, target_id, key))
        ],
        table_name=body.get("name"),
    )
    accepted = await store_and_deliver(bridge, new)
    if not accepted.created:
        # The target and key were seen before: Prefect's current JSON of that run.
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
    if answered is not None and answered.status_code is not None and answered.response_body:
        if answered.outcome is Outcome.DELIVERED and turn.delivery.state is DeliveryState.DELIVERED:
            status = 201 if answered.created else 200
            return Response(answered.response_body, status, media_type="application/json")
        if answered.outcome is Outcome.PERMANENT:
            # Prefect refused it for good (an unknown deployment, a bad parameter): its own
            # answer, as a direct call would get it (credentials masked at the source).
            return Response(
                answered.response_body, answered.status_code, media_type=_media(answered)
            )
    return JSONResponse(accepted.answer().model_dump(mode="json"), 202)


def prefect_key(kind: str, target_id: str, key: str) -> str:
    """The idempotency key sent to Prefect: the caller's for a flow run (as the seed
    template sends it); for a deployment's run ``deployment/<id>/<key>``. Prefect
    deduplicates per flow, so with the caller's key alone a deployment's call would be
    answered with a bare run (or another deployment's) of the same flow made with that
    key: another deployment is another run."""
    return key if kind == "flow" else f"{kind}/{target_id}/{key}"


def _media(answer: Any) -> str:
    try:
        json.loads(answer.response_body)
    except ValueError:
        return "text/plain; charset=utf-8"
    return "application/json"


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

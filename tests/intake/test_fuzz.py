"""Schemathesis against the running service's own OpenAPI schema: every route, with the
right token, fuzzed; no answer is a 5xx and every answer matches the schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import CheckFunction
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.support.processes import ServiceProcess, clean_environment
from tests.support.tokens import ADMIN_TOKEN, TOKEN
from tools.localprefect import PrefectServer, free_port


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, prefect: PrefectServer
) -> Iterator[ServiceProcess]:
    tmp = tmp_path_factory.mktemp("fuzz")
    env = clean_environment(
        PREFECT_API_URL=prefect.api_url,
        PREFECT_FLOW_ID=prefect.create_flow(f"fuzz-{uuid.uuid4().hex[:8]}"),
        BRIDGE_WEBHOOK_TOKEN=TOKEN,
        BRIDGE_ADMIN_TOKEN=ADMIN_TOKEN,
        BRIDGE_DROPIN="true",
        BRIDGE_PORT=str(free_port()),
        BRIDGE_DATABASE_URL=f"sqlite:///{tmp / 'bridge.db'}",
        BRIDGE_SYNC_WAIT="200ms",
        BRIDGE_LOG_FORMAT="json",
    )
    process = ServiceProcess(env, tmp, tmp / "service.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def api_schema(service: ServiceProcess) -> OpenApiSchema:
    return schemathesis.openapi.from_url(f"{service.url}/openapi.json")


def operations(api_schema: OpenApiSchema) -> list[Any]:
    found = []
    for result in api_schema.get_all_operations():
        assert isinstance(result, Ok), f"our own schema is invalid: {result}"
        found.append(result.ok())
    return found


# An Erathos body's field names are case-insensitive ("STATUS" is "status"), which JSON
# Schema cannot state: an unknown-looking key may be a known field with a wrong value, or
# the same field twice, and be refused with a 422 naming it. For those bodies Schemathesis
# may not hold a refusal against the schema; every other check still runs on them.
ERATHOS_BODIES = {"/webhooks/erathos", "/simulate"}


def fuzz(operation: Any, token: str) -> None:
    excluded: list[CheckFunction] = (
        [positive_data_acceptance] if operation.path in ERATHOS_BODIES else []
    )

    @given(case=operation.as_strategy())
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    def calls(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(
            headers={"Authorization": f"Bearer {token}"}, excluded_checks=excluded
        )

    calls()


@pytest.mark.slow
def test_no_route_answers_5xx_or_outside_its_schema(api_schema: OpenApiSchema) -> None:
    # Schemathesis's own pytest plugin does not run on this pytest; its Hypothesis
    # strategies do, one operation at a time.
    tried = []
    for operation in operations(api_schema):
        token = TOKEN if operation.path.startswith(("/webhooks", "/api")) else ADMIN_TOKEN
        fuzz(operation, token)
        tried.append(f"{operation.method.upper()} {operation.path}")
    assert "POST /webhooks/erathos" in tried
    assert len(tried) >= 10

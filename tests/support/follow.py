"""Runs to follow, made for a test: a real flow run in the real Prefect server, stored as
a delivered delivery of its own event (as the dispatcher leaves it), and Prefect told to
move the run to a state (``set_state``, forced: no worker runs these)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from app.storage.records import (
    AttemptRecord,
    DeliveryRecord,
    DeliveryState,
    DeliveryUpdate,
    NewDelivery,
    NewEvent,
)
from app.storage.store import Store
from tests.support.paths import ROOT
from tools.localprefect import PrefectServer

# Served by the ``outcome_flow`` fixture: it completes, or raises for a table ``broken...``.
OUTCOME_FLOW = ROOT / "tests" / "flows" / "outcome.py"
OUTCOME_DEPLOYMENT = "bridge-outcome/outcome"
OUTCOME_SET_DEPLOYMENT = "bridge-outcome-set/outcome"  # a set's: fails for a load "broken..."

OWNER = "test-dispatcher"


def new_flow_run(prefect: PrefectServer, flow_id: str) -> str:
    """A PENDING run with no deployment: it stays PENDING until told otherwise."""
    return str(prefect.request("POST", "flow_runs/", {"flow_id": flow_id})["id"])


def set_run_state(prefect: PrefectServer, flow_run_id: str, state: str) -> None:
    body = {"state": {"type": state}, "force": True}
    prefect.request("POST", f"flow_runs/{flow_run_id}/set_state", body)


async def delivered(
    store: Store,
    flow_run_id: str,
    *,
    route: str = "dbt",
    connection: str = "default",
    payload: dict[str, Any] | None = None,
) -> DeliveryRecord:
    """An event whose one delivery made ``flow_run_id`` (and is followed from now on)."""
    execution_id = str(uuid.uuid4())
    new = NewEvent(
        execution_id,
        payload or {"execution_id": execution_id},
        [NewDelivery(route, connection, execution_id)],
    )
    recorded = await store.record_event(new, claim_for=OWNER, lease_seconds=60)
    [delivery] = recorded.deliveries
    now = store.clock()
    attempt = AttemptRecord(0, delivery.id, 1, now, 5.0, "delivered", 201, None, None, None)
    update = DeliveryUpdate(
        DeliveryState.DELIVERED, 201, None, flow_run_id=flow_run_id, finished_at=now
    )
    assert await store.complete_attempt(attempt, update, OWNER)
    return update.applied_to(delivery)


def outcome_routes(path: Path) -> Path:
    """A routes file with one route, ``outcome``, to the served outcome flow."""
    route = {
        "name": "outcome",
        "deployment": OUTCOME_DEPLOYMENT,
        "flow_run": {
            "parameters": {
                "execution_id": "${{erathos.execution_id}}",
                "table_name": "${{erathos.table_name}}",
            }
        },
    }
    path.write_text(json.dumps({"routes": [route]}))
    return path

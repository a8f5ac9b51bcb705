"""Flows for the tests of following runs (tests/delivery/test_follow_served.py and
test_sets_follow.py): served by ``tools.localprefect.ServedFlow`` from the Prefect
server's environment, each completes, or raises (so its run is FAILED) when a table's
name starts with ``broken``: the load's own, or for a set any of its loads'."""

# No `from __future__ import annotations`: Prefect reads the parameters' types at run time.
from typing import Any

from prefect import flow, serve

FLOW_NAME = "bridge-outcome"
SET_FLOW_NAME = "bridge-outcome-set"
DEPLOYMENT_NAME = "outcome"


@flow(name=FLOW_NAME)
def bridge_outcome(execution_id: str, table_name: str) -> str:
    if table_name.startswith("broken"):
        raise RuntimeError(f"the load of {table_name} broke the transformation")
    return f"{execution_id}: {table_name} transformed"


@flow(name=SET_FLOW_NAME)
def bridge_outcome_set(
    set_name: str,
    window: str,
    loads: list[dict[str, Any]],
    missing: list[str] | None = None,
    late: bool = False,
) -> str:
    broken = [x["table_name"] for x in loads if str(x["table_name"]).startswith("broken")]
    if broken:
        raise RuntimeError(f"the loads of {broken} broke the set {set_name}'s transformation")
    return f"{set_name} {window}: {len(loads)} loads transformed"


if __name__ == "__main__":
    serve(
        bridge_outcome.to_deployment(name=DEPLOYMENT_NAME),
        bridge_outcome_set.to_deployment(name=DEPLOYMENT_NAME),
        pause_on_shutdown=False,
    )

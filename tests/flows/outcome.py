"""A flow for the tests of following runs (tests/delivery/test_follow.py): served by
``tools.localprefect.ServedFlow`` from the Prefect server's environment, it completes,
or raises (so its run is FAILED) when the table's name starts with ``broken``."""

# No `from __future__ import annotations`: Prefect reads the parameters' types at run time.
from prefect import flow

FLOW_NAME = "bridge-outcome"
DEPLOYMENT_NAME = "outcome"


@flow(name=FLOW_NAME)
def bridge_outcome(execution_id: str, table_name: str) -> str:
    if table_name.startswith("broken"):
        raise RuntimeError(f"the load of {table_name} broke the transformation")
    return f"{execution_id}: {table_name} transformed"


if __name__ == "__main__":
    bridge_outcome.serve(name=DEPLOYMENT_NAME, pause_on_shutdown=False)

"""Example Prefect flows for erathos-prefect-bridge: one Erathos load in, logged; and a
set of tables in (every member's load, and those missing when its deadline passed).

Replace the body of ``erathos_dbt`` with your dbt/transform call. Run this file with
Prefect installed and ``PREFECT_API_URL`` pointing at your Prefect server:

    PREFECT_API_URL=http://127.0.0.1:4200/api python examples/flows/erathos_dbt.py

``serve()`` creates the deployments ``erathos-dbt/example`` and ``erathos-set/example``
and executes their runs in this process's environment: no work pool or worker to set
up. The routes file ``examples/routes.json`` sends every FINISHED Erathos load to the
first, and its set ``shop`` to the second once ``orders`` and ``customers`` have loaded.
"""

# No `from __future__ import annotations`: Prefect reads the parameters' types at run
# time to validate and convert them, and postponed annotations would hide them.
from datetime import date, time
from typing import Any

from prefect import flow, get_run_logger, serve

FLOW_NAME = "erathos-dbt"
SET_FLOW_NAME = "erathos-set"
DEPLOYMENT_NAME = "example"


@flow(name=FLOW_NAME, log_prints=True)
def erathos_dbt(
    execution_id: str,
    table_name: str,
    schema_name: str | None = None,
    rows: int | None = None,
    status: str | None = None,
    finished_at_date: date | None = None,
    finished_at_time: time | None = None,
) -> dict[str, object]:
    """One Erathos execution, with its metadata typed by the routes file's parameters
    (``"${{erathos.rows}}"`` arrives as an integer, the date as a date)."""
    logger = get_run_logger()
    logger.info(
        "Erathos execution %s: %s rows loaded into %s.%s (%s, finished %s %s)",
        execution_id,
        rows,
        schema_name,
        table_name,
        status,
        finished_at_date,
        finished_at_time,
    )
    # Your transformation goes here: the table that was just loaded is known, so build
    # only what depends on it. For example, with dbt-core installed:
    #
    #     from dbt.cli.main import dbtRunner
    #     dbtRunner().invoke(["build", "--select", f"source:{schema_name}.{table_name}+"])
    return {"execution_id": execution_id, "table": f"{schema_name}.{table_name}", "rows": rows}


@flow(name=SET_FLOW_NAME, log_prints=True)
def erathos_set(
    set_name: str,
    window: str,
    loads: list[dict[str, Any]],
    missing: list[str] | None = None,
    late: bool = False,
) -> dict[str, object]:
    """A set of tables: one load per member that arrived in the window (``rows`` an
    integer), and the members still missing when its deadline passed (``late``)."""
    logger = get_run_logger()
    for load in loads:
        logger.info("%s: execution %s, %s rows", load["member"], load["execution_id"], load["rows"])
    if late:
        logger.warning("window %s closed at its deadline; missing: %s", window, missing)
    # Your transformation goes here, once for the whole set. For example:
    #
    #     dbtRunner().invoke(["build", "--select", "source:raw_shop+"])
    return {"set": set_name, "window": window, "executions": [x["execution_id"] for x in loads]}


if __name__ == "__main__":
    # Creates (or updates) the deployments and runs each of their flow runs as it comes;
    # polls for new runs every PREFECT_RUNNER_POLL_FREQUENCY seconds (default 10).
    # Not paused on shutdown: runs the bridge creates while this process is down stay
    # scheduled, and run when it is back.
    serve(
        erathos_dbt.to_deployment(name=DEPLOYMENT_NAME),
        erathos_set.to_deployment(name=DEPLOYMENT_NAME),
        pause_on_shutdown=False,
    )

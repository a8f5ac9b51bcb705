"""An example Prefect flow for erathos-prefect-bridge: one Erathos load in, logged.

Replace the body of ``erathos_dbt`` with your dbt/transform call. Run this file with
Prefect installed and ``PREFECT_API_URL`` pointing at your Prefect server:

    PREFECT_API_URL=http://127.0.0.1:4200/api python examples/flows/erathos_dbt.py

``flow.serve()`` creates the deployment ``erathos-dbt/example`` and executes its runs
in this process's environment: no work pool or worker to set up. The routes file
``examples/routes.json`` sends every FINISHED Erathos load to it.
"""

# No `from __future__ import annotations`: Prefect reads the parameters' types at run
# time to validate and convert them, and postponed annotations would hide them.
from datetime import date, time

from prefect import flow, get_run_logger

FLOW_NAME = "erathos-dbt"
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


if __name__ == "__main__":
    # Creates (or updates) the deployment and runs each of its flow runs as it comes;
    # polls for new runs every PREFECT_RUNNER_POLL_FREQUENCY seconds (default 10).
    # Not paused on shutdown: runs the bridge creates while this process is down stay
    # scheduled, and run when it is back.
    erathos_dbt.serve(name=DEPLOYMENT_NAME, pause_on_shutdown=False)

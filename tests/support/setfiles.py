"""For the tests of sets: a routes file with one set, a member's load as Erathos sends it,
the served example flow's set deployment, and the run a window made."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.support.tokens import ADMIN_TOKEN, TOKEN, auth
from tests.support.waiting import eventually
from tools.localprefect import EXAMPLE_SET_DEPLOYMENT, PrefectServer, ServedFlow

SET_DEPLOYMENT = EXAMPLE_SET_DEPLOYMENT  # examples/flows/erathos_dbt.py serves it
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def set_name() -> str:
    """A set of its own for each test: runs never mix between tests."""
    return f"shop-{uuid.uuid4().hex[:8]}"


def write_routes(
    path: Path,
    name: str,
    members: list[str],
    window: dict[str, Any],
    *,
    when_late: str = "run",
    deployment: str = SET_DEPLOYMENT,
) -> Path:
    """A routes file with the set alone, its run tagged with the set's name."""
    document = {
        "sets": [
            {
                "name": name,
                "members": members,
                "window": window,
                "when_late": when_late,
                "deployment": deployment,
                "flow_run": {
                    "name": f"{name}_${{{{set.window}}}}",
                    "parameters": {
                        "set_name": "${{set.name}}",
                        "window": "${{set.window}}",
                        "loads": "${{set.loads}}",
                        "missing": "${{set.missing}}",
                        "late": "${{set.late}}",
                    },
                    "tags": [name],
                },
            }
        ]
    }
    path.write_text(json.dumps(document))
    return path


def load(table: str, rows: int = 10, schema: str = "raw_shop", **fields: str) -> dict[str, str]:
    """One member's load, every value a string (as Erathos sends them)."""
    return {
        "execution_id": str(uuid.uuid4()),
        "job_id": str(uuid.uuid4()),
        "schema_name": schema,
        "table_name": table,
        "status": "FINISHED",
        "rows": str(rows),
        "force_history": "false",
        "finished_at_date": "2026-12-07",
        "finished_at_time": "06:15",
        **fields,
    }


async def send(client: httpx.AsyncClient, body: dict[str, str]) -> dict[str, Any]:
    answer = await client.post("/webhooks/erathos", json=body, headers=auth(TOKEN))
    assert answer.status_code in (200, 202), answer.text
    found: dict[str, Any] = answer.json()
    return found


async def windows(client: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    answer = await client.get(f"/sets/{name}/windows", headers=auth(ADMIN_TOKEN))
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["windows"]
    return found


async def closed_window(client: httpx.AsyncClient, name: str, within: float) -> dict[str, Any]:
    """The set's latest closed window, once there is one (a daily set's next window may
    be open already)."""

    async def closed() -> list[dict[str, Any]]:
        return [w for w in await windows(client, name) if w["state"] != "open"]

    async def is_closed() -> bool:
        return bool(await closed())

    await eventually(is_closed, within=within, what=f"a window of {name} closed")
    return (await closed())[0]


async def window_deliveries(
    client: httpx.AsyncClient, window: dict[str, Any], within: float
) -> list[dict[str, Any]]:
    """The deliveries of the event a window's closing made, once none is pending."""
    event_id = window["event_id"]

    async def settled() -> bool:
        answer = await client.get(f"/events/{event_id}", headers=auth(ADMIN_TOKEN))
        assert answer.status_code == 200, answer.text
        return all(d["state"] != "pending" for d in answer.json()["deliveries"])

    await eventually(settled, within=within, what=f"the deliveries of {event_id} settled")
    answer = await client.get(f"/events/{event_id}", headers=auth(ADMIN_TOKEN))
    found: list[dict[str, Any]] = answer.json()["deliveries"]
    return found


def runs_tagged(prefect: PrefectServer, tag: str) -> list[dict[str, Any]]:
    """Every flow run Prefect has with this tag (a test's set name)."""
    body = {"flow_runs": {"tags": {"all_": [tag]}}, "limit": 50}
    found: list[dict[str, Any]] = prefect.request("POST", "flow_runs/filter", body)
    return found


async def finished_run(prefect: PrefectServer, run_id: str, within: float = 90) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        found: dict[str, Any] = prefect.request("GET", f"flow_runs/{run_id}")
        return found

    await eventually(
        lambda: run()["state"]["type"] in TERMINAL, within=within, what="the set's run finished"
    )
    return run()


def flow_log(flow: ServedFlow) -> str:
    """The end of the served flow's output, for a failed assertion's message."""
    return flow.log_path.read_text()[-3000:] if flow.log_path is not None else ""

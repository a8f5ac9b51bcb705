"""The ``automation`` command: the Prefect automation that runs a deployment on the
service's Erathos events, printed (the examples in examples/automations/ are its output)
or created; and what a real Prefect server with its services makes of it: a matching
event becomes a run of the deployment with typed parameters, a failed load runs the
failure automation and a finished one does not, three loads of a table within the
debounce window make one run."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from app.cli import main
from app.cli.automations import (
    DEFAULT_PARAMETERS,
    EVENT_NAMES,
    AutomationError,
    Deployment,
    chosen_parameters,
)
from tests.support.erathos import webhook_body
from tests.support.faults import FaultProxy
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.paths import ROOT
from tests.support.tokens import ADMIN_TOKEN, auth
from tests.support.waiting import eventually, settled
from tools.localprefect import PrefectError, PrefectServer

EXAMPLES = ROOT / "examples" / "automations"
PLACEHOLDER = "<DEPLOYMENT_ID>"
EXAMPLE_DEPLOYMENT = "erathos-dbt/example"
# Each example, and the arguments that print it.
CASES = {
    "run-on-load.json": ["--table", "orders"],
    "run-on-failure.json": ["--status", "failed"],
    "once-a-minute-per-table.json": ["--debounce", "60s"],
}
# The parameter schema Prefect makes for examples/flows/erathos_dbt.py's signature.
EXAMPLE_SCHEMA = {
    "type": "object",
    "title": "Parameters",
    "properties": {
        "execution_id": {"type": "string", "title": "execution_id", "position": 0},
        "table_name": {"type": "string", "title": "table_name", "position": 1},
        "schema_name": {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "default": None,
            "title": "schema_name",
            "position": 2,
        },
        "rows": {
            "anyOf": [{"type": "integer"}, {"type": "null"}],
            "default": None,
            "title": "rows",
            "position": 3,
        },
        "status": {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "default": None,
            "title": "status",
            "position": 4,
        },
        "finished_at_date": {
            "anyOf": [{"type": "string", "format": "date"}, {"type": "null"}],
            "default": None,
            "title": "finished_at_date",
            "position": 5,
        },
        "finished_at_time": {
            "anyOf": [{"type": "string", "format": "time"}, {"type": "null"}],
            "default": None,
            "title": "finished_at_time",
            "position": 6,
        },
    },
    "required": ["execution_id", "table_name"],
    "definitions": {},
}
CONNECTION = "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"


@pytest.fixture
def environment(cli_environment: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Nothing of the service's own settings: the command needs none of them."""
    cli_environment.delenv("BRIDGE_WEBHOOK_TOKEN")
    return cli_environment


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``erathos-prefect-bridge automation ...``: its exit code, stdout and stderr."""
    try:
        code = main(["automation", *argv])
    except SystemExit as exc:  # argparse refuses an argument itself
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def example(name: str, deployment_id: str, label: str = EXAMPLE_DEPLOYMENT) -> dict[str, Any]:
    """An example of examples/automations/, for this deployment."""
    text = (EXAMPLES / name).read_text()
    found: dict[str, Any] = json.loads(
        text.replace(PLACEHOLDER, deployment_id).replace(EXAMPLE_DEPLOYMENT, label)
    )
    return found


def as_prefect_keeps_it(automation: dict[str, Any], sent: dict[str, Any]) -> dict[str, Any]:
    """What Prefect answers for an automation, reduced to the fields that were sent
    (Prefect adds ids, times and defaults, and keeps ``for_each`` as a set)."""
    kept = {key: automation[key] for key in sent}
    kept["trigger"] = {key: automation["trigger"][key] for key in sent["trigger"]}
    kept["trigger"]["for_each"] = sorted(kept["trigger"]["for_each"])
    kept["trigger"]["within"] = int(kept["trigger"]["within"])
    kept["actions"] = [
        {key: action[key] for key in sent_action}
        for action, sent_action in zip(automation["actions"], sent["actions"], strict=True)
    ]
    return kept


# --- printed: no Prefect ---------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_each_example_automation_is_what_the_command_prints(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    deployment_id = str(uuid.uuid4())
    argv = ["--deployment", EXAMPLE_DEPLOYMENT, "--deployment-id", deployment_id, *CASES[name]]

    code, out, _ = run(argv, capsys)  # no Prefect setting at all: nothing is looked up

    assert code == 0
    assert json.loads(out) == example(name, deployment_id)


def test_every_parameter_is_typed_through_tojson_from_the_event(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--deployment-id", str(uuid.uuid4()), "--parameters", "loaded=rows,table_name"]
    argv += ["--parameters", "at=occurred"]

    code, out, _ = run(argv, capsys)

    assert code == 0
    [action] = json.loads(out)["actions"]
    templates = {name: value["value"]["template"] for name, value in action["parameters"].items()}
    assert templates == {
        "loaded": "{{ event.payload.get('rows') | tojson }}",
        "table_name": "{{ event.payload.get('table_name') | tojson }}",
        "at": "{{ event.occurred.isoformat() | tojson }}",
    }
    assert {value["__prefect_kind"] for value in action["parameters"].values()} == {"json"}


def test_without_parameters_a_deployment_not_looked_up_gets_the_example_flows(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["--deployment-id", str(uuid.uuid4())], capsys)

    assert code == 0
    assert list(json.loads(out)["actions"][0]["parameters"]) == list(DEFAULT_PARAMETERS)
    assert "are not known here" in err
    code, out, _ = run(["--deployment-id", str(uuid.uuid4()), "--parameters", ""], capsys)
    assert json.loads(out)["actions"][0]["parameters"] == {}


def test_several_tables_and_schemas_match_any_of_them(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--deployment-id", str(uuid.uuid4()), "--table", "orders", "--table", "stg_*"]
    argv += ["--schema", "raw_shop"]

    code, out, _ = run(argv, capsys)

    automation = json.loads(out)
    assert code == 0
    assert automation["trigger"]["match"] == {
        "prefect.resource.id": "erathos.job.*",
        "erathos.schema.name": "raw_shop",
        "erathos.table.name": ["orders", "stg_*"],
    }
    assert automation["name"].startswith("erathos: orders or stg_* in raw_shop finished -> ")


UNKNOWN = Deployment("d")  # given by id, not looked up: its parameters are not known
TAKES = Deployment("d", "dbt/prod", ("target", "rows", "table_name"), ("target",))


@pytest.mark.parametrize(
    ("deployment", "requested", "chosen"),
    [
        (UNKNOWN, None, {field: field for field in DEFAULT_PARAMETERS}),
        (UNKNOWN, {"loaded": "rows"}, {"loaded": "rows"}),
        (TAKES, None, {"rows": "rows", "table_name": "table_name"}),
        (TAKES, {"target": "schema_name"}, {"target": "schema_name"}),
        (TAKES, {}, {}),
        (
            Deployment("d", "dbt/prod", ()),
            {"rows": "rows"},
            "has no parameter rows (it takes: none)",
        ),
        (TAKES, {"loaded": "rows"}, "has no parameter loaded (it takes: target, rows, table_name)"),
    ],
)
def test_the_parameters_chosen_for_a_deployment(
    deployment: Deployment, requested: dict[str, str] | None, chosen: dict[str, str] | str
) -> None:
    if isinstance(chosen, str):
        with pytest.raises(AutomationError, match=re.escape(chosen)):
            chosen_parameters(requested, deployment)
        return
    mapping, notes = chosen_parameters(requested, deployment)
    assert mapping == chosen
    # A required parameter that nothing passes is said, as Prefect would refuse the runs.
    assert any("requires target" in note for note in notes) == (
        deployment is TAKES and "target" not in chosen
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--parameters", "rows=row_count"], "'row_count' is not an Erathos field"),
        (["--parameters", "loaded rows=rows"], "'loaded rows' is not a parameter name"),
        (["--parameters", "rows", "--parameters", "rows=columns"], "rows is given more than"),
        (["--table", "ord*rs"], "a * only at the end"),
        (["--debounce", "500ms"], "a duration of at least 1s"),
        (["--debounce", "1.5s"], "whole seconds"),
        (["--deployment", "erathos-dbt"], "must be 'flow-name/deployment-name'"),
    ],
)
def test_a_wrong_argument_is_refused_with_exit_2_naming_it(
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    code, out, err = run(["--deployment-id", str(uuid.uuid4()), *argv], capsys)

    assert (code, out) == (2, "")
    assert message in err


def test_without_a_deployment_or_a_prefect_the_command_says_what_it_needs(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([], capsys)[::2] == (
        2,
        "erathos-prefect-bridge: automation needs --deployment "
        "FLOW/DEPLOYMENT or --deployment-id\n",
    )
    code, _, err = run(["--deployment", EXAMPLE_DEPLOYMENT], capsys)  # by name: a look-up
    assert code == 2
    assert "PREFECT_API_URL: is required" in err
    environment.setenv("PREFECT_API_URL", "prefect:4200/api")
    code, _, err = run(["--deployment", EXAMPLE_DEPLOYMENT], capsys)
    assert code == 2
    assert "PREFECT_API_URL: must be an absolute http(s) URL" in err


# --- against a real Prefect (its API) ----------------------------------------------------


@pytest.fixture
def deployment(prefect: PrefectServer) -> tuple[str, str]:
    """A deployment of the example flow's parameters on the session's Prefect (a flow of
    its own for each test): its ``flow/deployment`` name and its id."""
    flow = f"dbt-{uuid.uuid4().hex[:10]}"
    flow_id = prefect.create_flow(flow)
    deployment_id = prefect.create_deployment(
        flow_id, "example", parameter_openapi_schema=EXAMPLE_SCHEMA
    )
    return f"{flow}/example", deployment_id


@pytest.fixture
def created(environment: pytest.MonkeyPatch) -> Iterator[list[tuple[PrefectServer, str]]]:
    """Automations a test creates, deleted afterwards: no other test's events fire them."""
    automations: list[tuple[PrefectServer, str]] = []
    yield automations
    for server, automation_id in automations:
        patiently(server, "DELETE", f"automations/{automation_id}")


def test_by_name_it_passes_the_erathos_fields_the_deployment_takes(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], prefect: PrefectServer
) -> None:
    environment.setenv("PREFECT_API_URL", prefect.api_url)
    flow = f"dbt-{uuid.uuid4().hex[:10]}"
    schema = {
        "type": "object",
        "properties": {
            "target": {"type": "string", "position": 0},
            "rows": {"type": "integer", "position": 1},
            "table_name": {"type": "string", "position": 2},
            "full_refresh": {"type": "boolean", "default": False, "position": 3},
        },
        "required": ["target", "rows", "table_name"],
    }
    deployment_id = prefect.create_deployment(
        prefect.create_flow(flow), "prod", parameter_openapi_schema=schema
    )

    code, out, err = run(["--deployment", f"{flow}/prod"], capsys)

    automation = json.loads(out)
    assert code == 0
    assert automation["actions"][0]["deployment_id"] == deployment_id
    assert list(automation["actions"][0]["parameters"]) == ["rows", "table_name"]
    assert automation["name"] == f"erathos: any table finished -> {flow}/prod"
    assert f"{flow}/prod requires target, which the automation does not pass" in err


def test_create_makes_what_it_prints_and_never_a_second_one(
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    prefect: PrefectServer,
    deployment: tuple[str, str],
    created: list[tuple[PrefectServer, str]],
) -> None:
    environment.setenv("PREFECT_API_URL", prefect.api_url)
    name, deployment_id = deployment
    argv = ["--deployment", name, "--table", "orders"]
    printed = json.loads(run(argv, capsys)[1])

    code, out, err = run([*argv, "--create"], capsys)

    assert code == 0, err
    automation_id = out.strip()
    created.append((prefect, automation_id))
    automation = prefect.request("GET", f"automations/{automation_id}")
    assert as_prefect_keeps_it(automation, printed) == printed
    assert printed == example("run-on-load.json", deployment_id, name)
    ui = prefect.api_url.removesuffix("/api")
    assert f"{ui}/automations/automation/{automation_id}" in err
    assert f"{ui}/deployments/deployment/{deployment_id}" in err
    # Twice the same automation would run the deployment twice for each event.
    code, out, err = run([*argv, "--create"], capsys)
    assert (code, out) == (1, "")
    assert f"already has the automation {printed['name']!r} ({automation_id})" in err
    related = prefect.request("GET", f"automations/related-to/prefect.deployment.{deployment_id}")
    assert [a["id"] for a in related] == [automation_id]


def test_an_unknown_deployment_or_parameter_is_refused_and_nothing_is_created(
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    prefect: PrefectServer,
    deployment: tuple[str, str],
) -> None:
    environment.setenv("PREFECT_API_URL", prefect.api_url)
    name, deployment_id = deployment
    flow = name.partition("/")[0]

    unknown_name = run(["--deployment", f"{flow}/nope", "--create"], capsys)
    unknown_id = run(["--deployment-id", str(uuid.uuid4()), "--create"], capsys)
    other_id = run(["--deployment", name, "--deployment-id", str(uuid.uuid4()), "--create"], capsys)
    wrong_parameter = run(["--deployment", name, "--parameters", "n=rows", "--create"], capsys)

    assert unknown_name[::2] == (
        1,
        f"erathos-prefect-bridge: Prefect at {prefect.api_url} has no {flow}/nope\n",
    )
    assert unknown_id[0] == 1
    assert "has no deployment" in unknown_id[2]
    assert other_id[0] == 2
    assert f"{name} is deployment {deployment_id}, not" in other_id[2]
    assert wrong_parameter[0] == 2
    assert f"{name} has no parameter n (it takes: execution_id, table_name," in wrong_parameter[2]
    related = prefect.request("GET", f"automations/related-to/prefect.deployment.{deployment_id}")
    assert related == []


@pytest.mark.anyio
async def test_create_behind_a_proxy_that_answers_503_after_prefect_saved_it_makes_one(
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    prefect: PrefectServer,
    deployment: tuple[str, str],
    created: list[tuple[PrefectServer, str]],
) -> None:
    """A 503 (a timeout, a lost connection) may come after Prefect saved the automation:
    the command looks for it by name before it sends it again."""
    proxy = FaultProxy(
        f"http://127.0.0.1:{prefect.port}", ["503-after", "503-after"], faulted=("/automations/",)
    )
    await proxy.start()
    environment.setenv("PREFECT_API_URL", f"{proxy.url}/api")
    name, deployment_id = deployment
    try:
        # The CLI runs its own event loop: in a thread of its own, beside the proxy's.
        code, out, err = await asyncio.to_thread(
            run, ["--deployment", name, "--table", "orders", "--create"], capsys
        )
    finally:
        await proxy.stop()

    related = prefect.request("GET", f"automations/related-to/prefect.deployment.{deployment_id}")
    created += [(prefect, a["id"]) for a in related]
    assert code == 0, err
    assert proxy.applied == ["503-after"]  # saved, answered 503, found by its name
    assert [a["id"] for a in related] == [out.strip()]


# --- what Prefect does with them: a real server with its services ----------------------


def erathos_event(
    status: str = "FINISHED", table: str = "orders", schema: str = "raw_shop", rows: int = 1520
) -> dict[str, Any]:
    """A Prefect event in the service's shape (docs/events.md), finished this minute."""
    job_id, execution_id = str(uuid.uuid4()), str(uuid.uuid4())
    name = f"erathos.job.{status.lower()}"
    finished = datetime.now(UTC).replace(second=0, microsecond=0)
    payload: dict[str, Any] = {
        "job_id": job_id,
        "connection_id": CONNECTION,
        "connection_name": "Shop Postgres",
        "schema_name": schema,
        "table_name": table,
        "execution_id": execution_id,
        "status": status,
        "rows": rows,
        "columns": 12,
        "total_duration": 42,
        "triggered_by": "Erathos Schedule",
        "is_orchestration": False,
        "force_history": False,
        "nested_table": False,
        "finished_at_date": finished.date().isoformat(),
        "finished_at_time": finished.time().isoformat(),
        "finished_at_weekday": finished.weekday(),
    }
    labels = {
        "erathos.job.id": job_id,
        "erathos.connection.id": CONNECTION,
        "erathos.connection.name": "Shop Postgres",
        "erathos.schema.name": schema,
        "erathos.table.name": table,
        "erathos.execution.id": execution_id,
        "erathos.status": status,
    }
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{execution_id}/{name}")),
        "occurred": finished.isoformat().replace("+00:00", "Z"),
        "event": name,
        "resource": {
            "prefect.resource.id": f"erathos.job.{job_id}",
            "prefect.resource.name": f"{schema}.{table}",
            **labels,
        },
        "related": [
            {
                "prefect.resource.id": f"erathos.connection.{CONNECTION}",
                "prefect.resource.role": "connection",
            },
            {
                "prefect.resource.id": f"erathos.table.{CONNECTION}.{schema}.{table}",
                "prefect.resource.role": "table",
            },
        ],
        "payload": payload,
    }


def parameters_of(event: dict[str, Any]) -> dict[str, Any]:
    """The run parameters the example automations pass for an event (typed)."""
    return {name: event["payload"][name] for name in DEFAULT_PARAMETERS}


def patiently(server: PrefectServer, method: str, path: str, body: Any = None) -> Any:
    """``server.request``, tried again while Prefect answers 503: the server with services
    keeps its SQLite busy (most of all just after it started), and Prefect's own clients
    retry a 503 too."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return server.request(method, path, body)
        except PrefectError as exc:
            if "HTTP 503" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.3)


class Served:
    """One deployment on the server with services, and what its automation did."""

    def __init__(self, server: PrefectServer) -> None:
        self.server = server
        self.flow = f"dbt-{uuid.uuid4().hex[:10]}"
        self.flow_id = self.request("POST", "flows/", {"name": self.flow})["id"]
        deployment = {"name": "example", "flow_id": self.flow_id}
        deployment["parameter_openapi_schema"] = EXAMPLE_SCHEMA
        self.id: str = self.request("POST", "deployments/", deployment)["id"]
        self.name = f"{self.flow}/example"

    def runs(self) -> list[dict[str, Any]]:
        query = {"flows": {"id": {"any_": [self.flow_id]}}}
        runs: list[dict[str, Any]] = self.request("POST", "flow_runs/filter", query)
        return runs

    def request(self, method: str, path: str, body: Any = None) -> Any:
        return patiently(self.server, method, path, body)

    def fired_by(self, automation_id: str) -> list[str]:
        """The ids of the events that fired the automation, as Prefect records them (its
        ``prefect.automation.triggered`` events, persisted a few seconds later)."""
        query = {
            "filter": {
                "event": {"name": ["prefect.automation.triggered"]},
                "resource": {"id": [f"prefect.automation.{automation_id}"]},
            },
            "limit": 50,
        }
        events = self.request("POST", "events/filter", query)["events"]
        return sorted(e["payload"]["triggering_event"]["id"] for e in events)

    def settle(self, automation_id: str, runs: int, fired: int) -> float:
        """Wait until the automation has made ``runs`` runs and Prefect has recorded
        ``fired`` firings (every event posted before them has been judged by then);
        the seconds it took."""
        started = time.monotonic()

        def done() -> bool:
            return len(self.runs()) >= runs and len(self.fired_by(automation_id)) >= fired

        what = f"{runs} runs and {fired} firings of the automation"
        asyncio.run(eventually(done, within=45, what=what, every=0.5))
        return time.monotonic() - started


@pytest.fixture
def served(prefect_with_services: PrefectServer) -> Served:
    return Served(prefect_with_services)


def create(
    served: Served,
    case: str,
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    created: list[tuple[PrefectServer, str]],
) -> str:
    """``automation --deployment <its name> <the example's arguments> --create``, checked
    to have made in Prefect exactly the example (for this deployment)."""
    environment.setenv("PREFECT_API_URL", served.server.api_url)
    code, out, err = run(["--deployment", served.name, *CASES[case], "--create"], capsys)
    assert code == 0, err
    automation_id = out.strip()
    created.append((served.server, automation_id))
    expected = example(case, served.id, served.name)
    automation = served.request("GET", f"automations/{automation_id}")
    assert as_prefect_keeps_it(automation, expected) == expected
    return automation_id


@pytest.mark.slow
def test_an_automation_made_by_the_cli_turns_a_matching_event_into_a_typed_run(
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    served: Served,
    created: list[tuple[PrefectServer, str]],
) -> None:
    automation_id = create(served, "run-on-load.json", environment, capsys, created)
    other_table, orders = erathos_event(table="customers"), erathos_event(table="orders")

    posted = datetime.now(UTC)
    served.request("POST", "events", [other_table, orders])
    served.settle(automation_id, runs=1, fired=1)

    [run_] = served.runs()
    assert served.fired_by(automation_id) == [orders["id"]]
    assert run_["deployment_id"] == served.id
    assert run_["parameters"] == parameters_of(orders)
    assert isinstance(run_["parameters"]["rows"], int)  # 1520, not "1520"
    assert run_["state"]["type"] == "SCHEDULED"
    made_after = datetime.fromisoformat(run_["created"]) - posted
    assert made_after.total_seconds() < 10, made_after  # within seconds of the event


@pytest.mark.slow
def test_the_failure_automation_runs_on_a_failed_load_and_not_on_a_finished_one(
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    served: Served,
    created: list[tuple[PrefectServer, str]],
) -> None:
    automation_id = create(served, "run-on-failure.json", environment, capsys, created)
    finished = erathos_event(status="FINISHED")
    failed = erathos_event(status="FAILED", table="customers", rows=0)
    assert failed["event"] == EVENT_NAMES["failed"]

    served.request("POST", "events", [finished, failed])
    served.settle(automation_id, runs=1, fired=1)

    [run_] = served.runs()
    assert served.fired_by(automation_id) == [failed["id"]]
    assert run_["parameters"] == parameters_of(failed)
    assert run_["parameters"]["status"] == "FAILED"


@pytest.mark.slow
def test_the_debounced_automation_makes_one_run_per_table_for_loads_within_its_window(
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    served: Served,
    created: list[tuple[PrefectServer, str]],
) -> None:
    automation_id = create(served, "once-a-minute-per-table.json", environment, capsys, created)
    orders = [erathos_event(table="orders", rows=rows) for rows in (10, 20, 30)]
    customers = erathos_event(table="customers")

    served.request("POST", "events", [*orders, customers])
    served.settle(automation_id, runs=2, fired=2)

    runs = {run_["parameters"]["table_name"]: run_ for run_ in served.runs()}
    assert sorted(runs) == ["customers", "orders"]  # one run each
    fired = served.fired_by(automation_id)
    [first] = [event for event in orders if event["id"] in fired]
    assert sorted(fired) == sorted([first["id"], customers["id"]])
    # The load that opened the window runs it (the three arrived together here, so any of
    # them); the two others make no run of their own.
    assert runs["orders"]["parameters"] == parameters_of(first)


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_webhook_becomes_a_typed_run_through_its_event_and_a_cli_made_automation(
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    served: Served,
    created: list[tuple[PrefectServer, str]],
    make_settings: SettingsFactory,
) -> None:
    """The whole path: the service emits the webhook's event, Prefect's automation (made
    by ``automation --create``) turns it into a run of the deployment, typed."""
    # The CLI runs its own event loop: in a thread of its own, beside this test's.
    automation_id = await asyncio.to_thread(
        create, served, "run-on-load.json", environment, capsys, created
    )
    settings = make_settings(
        prefect_api_url=served.server.api_url,
        prefect_flow_id=served.request("POST", "flows/", {"name": f"f-{uuid.uuid4().hex}"})["id"],
        prefect_events=True,
        admin_token=ADMIN_TOKEN,
    )
    body = webhook_body(table_name="orders", rows="1520")

    async with open_client(settings) as client:
        answer = (await client.post("/webhooks/erathos", json=body, headers=auth())).json()

        def run_made() -> bool:
            return len(served.runs()) >= 1

        await eventually(run_made, within=30, what="the automation's run", every=0.5)
        await settled(client, within=30)  # the event read back from Prefect's store
        detail = await client.get(f"/events/{answer['event_id']}", headers=auth(ADMIN_TOKEN))

    emitted = [d for d in detail.json()["deliveries"] if d["route"] == "prefect-event"]
    assert [d["state"] for d in emitted] == ["delivered"]
    [run_] = served.runs()
    assert run_["deployment_id"] == served.id
    assert (run_["parameters"]["table_name"], run_["parameters"]["rows"]) == ("orders", 1520)
    assert run_["parameters"]["execution_id"] == body["execution_id"]
    assert automation_id

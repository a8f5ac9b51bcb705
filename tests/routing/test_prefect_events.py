"""Every Erathos event emitted as a Prefect event (``BRIDGE_PREFECT_EVENTS``, or a routes
file connection's ``"events": true``): the event built from the stored one, a delivery
like any other (stored with the event, retried, dead-lettered, counted), and what a real
Prefect server with its services makes of it: one event per execution, readable by its
labels, also after an outage."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

import app.delivery.readback
import app.routing.prefect_event
from app.cli import main
from app.config import ConfigurationError
from app.delivery.client import Outcome
from app.routing.event import METADATA, ErathosEvent
from app.routing.prefect_event import (
    NAMESPACE,
    emission_request,
    id_of_key,
    prefect_event,
    too_large,
)
from app.routing.router import PrefectRequest
from app.routing.templates import Lookup, compile_json, render_json
from app.storage.records import EventRecord
from tests.support.erathos import webhook_body
from tests.support.faults import FaultProxy
from tests.support.guarded import AUTH_STRING
from tests.support.inprocess import SettingsFactory, TargetSettings, open_client, stored_events
from tests.support.paths import ROOT
from tests.support.stub import REFUSED_URL, STUB_API_URL, mock_connection, recording
from tests.support.tokens import ADMIN_TOKEN, auth
from tests.support.waiting import eventually, settled
from tools.localprefect import PrefectServer

JOB = "6b0f4a52-8d3e-4f5a-9c1b-2e7d8f9a0b1c"
CONNECTION = "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
EXECUTION = "0b7c2a51-7d3e-4f0a-9c6b-5e4d3c2b1a00"
# uuid5(NAMESPACE, EXECUTION + "/erathos.job.finished"), written out: a change of the
# namespace or of the recipe would make every retry a new event for Prefect.
FINISHED_ID = "c6627e52-172c-5097-b92c-ed5280e9b588"
RECEIVED = datetime(2026, 11, 30, 8, 3, 59, 225778, tzinfo=UTC)


def stored(payload: dict[str, Any], received: datetime = RECEIVED) -> EventRecord:
    """An Erathos event as the store gives it back: the body as it came, and its receipt."""
    return EventRecord(
        id=uuid.uuid4().hex,
        execution_id=str(payload.get("execution_id", EXECUTION)),
        received_at=received.timestamp(),
        job_id=None,
        schema_name=None,
        table_name=None,
        status=None,
        payload=payload,
        ignored_reason=None,
    )


def erathos(**fields: Any) -> dict[str, Any]:
    """What Erathos sends (every value a string) for the pinned job, connection and
    execution; a field given as None is left out of the body."""
    body: dict[str, Any] = webhook_body(
        job_id=JOB, connection_id=CONNECTION, execution_id=EXECUTION
    )
    body.update(fields)
    return {name: value for name, value in body.items() if value is not None}


# -- the event, from the stored one -------------------------------------------------------


def test_a_finished_load_becomes_the_documented_event() -> None:
    event = prefect_event(stored(erathos()))

    assert event == {
        "id": FINISHED_ID,
        "occurred": "2026-11-28T06:15:00Z",
        "event": "erathos.job.finished",
        "resource": {
            "prefect.resource.id": f"erathos.job.{JOB}",
            "prefect.resource.name": "raw_shop.orders",
            "erathos.job.id": JOB,
            "erathos.connection.id": CONNECTION,
            "erathos.connection.name": "Shop Postgres",
            "erathos.schema.name": "raw_shop",
            "erathos.table.name": "orders",
            "erathos.execution.id": EXECUTION,
            "erathos.status": "FINISHED",
        },
        "related": [
            {
                "prefect.resource.id": f"erathos.connection.{CONNECTION}",
                "prefect.resource.role": "connection",
                "prefect.resource.name": "Shop Postgres",
            },
            {
                "prefect.resource.id": f"erathos.table.{CONNECTION}.raw_shop.orders",
                "prefect.resource.role": "table",
                "prefect.resource.name": "raw_shop.orders",
            },
        ],
        "payload": {
            "job_id": JOB,
            "connection_id": CONNECTION,
            "connection_name": "Shop Postgres",
            "schema_name": "raw_shop",
            "table_name": "orders",
            "execution_id": EXECUTION,
            "status": "FINISHED",
            "rows": 1520,
            "columns": 12,
            "total_duration": 42,
            "triggered_by": "Erathos Schedule",
            "is_orchestration": False,
            "force_history": False,
            "nested_table": False,
            "finished_at_date": "2026-11-28",
            "finished_at_time": "06:15:00",
            "finished_at_weekday": 6,
        },
    }


def test_the_events_page_shows_the_event_the_code_emits() -> None:
    page = (ROOT / "docs" / "events.md").read_text()
    section = page[page.index("## The event") :]
    shown = json.loads(section[section.index("```json") + 7 : section.index("```\n")])
    load = json.loads((ROOT / "examples" / "event.json").read_text()) | {
        "connection_id": "3f9a1c2e-7b4d-4e8f-a6c5-1d2e3f4a5b6c",
        "columns": "12",
        "force_history": "false",
        "nested_table": "false",
        "finished_at_weekday": "6",
    }

    assert prefect_event(stored(load)) == shown


def at(event: dict[str, Any], path: str) -> Any:
    """``resource/erathos.status`` -> event["resource"]["erathos.status"] (None if absent)."""
    found: Any = event
    for part in path.split("/"):
        found = found.get(part) if isinstance(found, dict) else found[int(part)]
    return found


@pytest.mark.parametrize(
    ("fields", "path", "expected"),
    [
        # the name, from the status
        ({"status": "FAILED"}, "event", "erathos.job.failed"),
        ({"status": "failed"}, "event", "erathos.job.failed"),
        ({"status": "FAILED"}, "resource/erathos.status", "FAILED"),
        ({"status": "Partial Success"}, "event", "erathos.job.partial_success"),
        ({"status": None}, "event", "erathos.job.unknown"),
        ({"status": None}, "resource/erathos.status", None),
        # occurred: Erathos's finished date and time, else the time of receipt
        ({"finished_at_time": "23:59"}, "occurred", "2026-11-28T23:59:00Z"),
        ({"finished_at_time": "06:15:30+02:00"}, "occurred", "2026-11-28T04:15:30Z"),
        ({"finished_at_time": None}, "occurred", "2026-11-30T08:03:59.225778Z"),
        ({"finished_at_date": None}, "occurred", "2026-11-30T08:03:59.225778Z"),
        # never after the receipt (a debounced trigger would wait for it): the payload keeps it
        ({"finished_at_date": "2099-12-31"}, "occurred", "2026-11-30T08:03:59.225778Z"),
        ({"finished_at_date": "2099-12-31"}, "payload/finished_at_date", "2099-12-31"),
        (
            {"finished_at_date": "2026-11-30", "finished_at_time": "08:04"},
            "occurred",
            "2026-11-30T08:03:59.225778Z",
        ),
        (
            {"finished_at_date": "2026-11-30", "finished_at_time": "08:03"},
            "occurred",
            "2026-11-30T08:03:00Z",
        ),
        # numbers and booleans typed, times as ISO text, missing fields null
        ({"rows": "0"}, "payload/rows", 0),
        ({"columns": "7"}, "payload/columns", 7),
        ({"rows": None}, "payload/rows", None),
        ({"nested_table": "TRUE"}, "payload/nested_table", True),
        ({"is_orchestration": "true"}, "payload/is_orchestration", True),
        ({"force_history": "false"}, "payload/force_history", False),
        ({"finished_at_time": "18:05"}, "payload/finished_at_time", "18:05:00"),
        ({"triggered_by": None}, "payload/triggered_by", None),
        # missing ids: labels and related resources left out, never "None"
        ({"job_id": None}, "resource/prefect.resource.id", "erathos.job.unknown"),
        ({"job_id": None}, "resource/erathos.job.id", None),
        ({"schema_name": None}, "resource/prefect.resource.name", "orders"),
        ({"schema_name": None}, "related/0/prefect.resource.role", "connection"),
        ({"connection_name": None}, "related/0/prefect.resource.name", None),
    ],
)
def test_the_event_of_each_stored_load(fields: dict[str, Any], path: str, expected: Any) -> None:
    assert at(prefect_event(stored(erathos(**fields))), path) == expected


def test_a_load_with_nothing_but_its_execution_id_is_still_an_event() -> None:
    event = prefect_event(stored({"execution_id": EXECUTION}))

    assert event["event"] == "erathos.job.unknown"
    assert event["occurred"] == "2026-11-30T08:03:59.225778Z"
    assert event["resource"] == {
        "prefect.resource.id": "erathos.job.unknown",
        "erathos.execution.id": EXECUTION,
    }
    assert event["related"] == []
    assert event["payload"] == {name: None for name in METADATA} | {"execution_id": EXECUTION}


def test_without_a_connection_id_there_is_no_related_resource() -> None:
    assert prefect_event(stored(erathos(connection_id=None)))["related"] == []


def test_a_dot_in_a_schema_or_table_name_never_makes_two_tables_one_resource() -> None:
    def table_of(schema: str, table: str) -> dict[str, str]:
        event = prefect_event(stored(erathos(schema_name=schema, table_name=table)))
        related: dict[str, str] = event["related"][1]
        return related

    one, other = table_of("a.b", "c"), table_of("a", "b.c")

    assert one["prefect.resource.id"] == f"erathos.table.{CONNECTION}.a%2Eb.c"
    assert other["prefect.resource.id"] == f"erathos.table.{CONNECTION}.a.b%2Ec"
    assert table_of("50%", "x")["prefect.resource.id"] == f"erathos.table.{CONNECTION}.50%25.x"
    assert one["prefect.resource.name"] == other["prefect.resource.name"] == "a.b.c"  # a name
    plain = table_of("raw_shop", "orders")  # no dot, no %: as it was
    assert plain["prefect.resource.id"] == f"erathos.table.{CONNECTION}.raw_shop.orders"


@pytest.mark.parametrize("finished_at_time", ["20:21", "20:21:30", "20:21+02:00"])
def test_a_routes_run_and_an_automations_run_of_one_load_get_the_same_values(
    finished_at_time: str,
) -> None:
    """The route's parameters of examples/routes.json, and what an automation passes (the
    event's payload), for the same load: one form of every value, the time too."""
    load = erathos(finished_at_time=finished_at_time)
    route = json.loads((ROOT / "examples" / "routes.json").read_text())["routes"][0]
    lookup = Lookup(variables={}, secrets={})
    compiled = compile_json(route["flow_run"]["parameters"], lookup, where="parameters")

    by_route = render_json(compiled, ErathosEvent.model_validate(load), lookup)
    payload = prefect_event(stored(load))["payload"]

    assert by_route == {name: payload[name] for name in by_route}
    assert len(by_route["finished_at_time"]) == len("20:21:00")  # ISO 8601, seconds kept


def test_every_label_is_a_string() -> None:
    event = prefect_event(stored(erathos()))

    for resource in (event["resource"], *event["related"]):
        assert all(isinstance(value, str) for value in resource.values()), resource


def test_the_id_is_uuid5_of_the_execution_id_and_the_name_whatever_else_changes() -> None:
    first = prefect_event(stored(erathos()))
    again = prefect_event(stored(erathos(rows="99"), received=datetime.now(UTC)))
    failed = prefect_event(stored(erathos(status="FAILED")))

    assert first["id"] == again["id"] == FINISHED_ID
    assert first["id"] == str(uuid.uuid5(NAMESPACE, f"{EXECUTION}/erathos.job.finished"))
    assert failed["id"] == str(uuid.uuid5(NAMESPACE, f"{EXECUTION}/erathos.job.failed"))
    # Sent with its delivery's key: the event's id, or a replay's new key made an id.
    assert prefect_event(stored(erathos()), FINISHED_ID)["id"] == FINISHED_ID
    replayed = f"{FINISHED_ID}:replay-0a1b2c3d"
    assert id_of_key(replayed) == str(uuid.uuid5(NAMESPACE, replayed)) != FINISHED_ID


def test_the_request_is_a_list_posted_to_events_without_a_trailing_slash() -> None:
    request = emission_request(stored(erathos()))

    assert request.path == "events"
    assert request.body == [prefect_event(stored(erathos()))]


def test_an_event_over_1_mb_as_sent_is_refused_with_the_reason() -> None:
    def request_of(size: int) -> PrefectRequest:
        wrapper = len(json.dumps([{"payload": ""}], separators=(",", ":")))
        return PrefectRequest("events", [{"payload": "é" * ((size - wrapper) // 2)}])

    assert too_large(request_of(1_000_000)) is None
    reason = too_large(request_of(1_000_002))
    assert reason is not None
    assert reason.startswith("the event is 1,000,002 bytes serialised, over the 1,000,000 allowed")
    assert "Prefect answers 204 to an event this large and drops it" in reason


# -- a delivery like any other ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.anyio
async def test_an_emission_is_stored_with_the_event_and_delivered_once_prefect_has_kept_it(
    events_on: TargetSettings, prefect_with_services: PrefectServer
) -> None:
    server = prefect_with_services
    flow_id = server.create_flow(f"dbt-{uuid.uuid4().hex[:10]}")
    settings = events_on(server.api_url, flow_id)
    body = finished_now()
    async with open_client(settings) as client:
        answer = (await client.post("/webhooks/erathos", json=body, headers=auth())).json()
        await settled(client, within=30)  # Prefect writes its events every few seconds
        detail = (
            await client.get(f"/events/{answer['event_id']}", headers=auth(ADMIN_TOKEN))
        ).json()
        metrics = (await client.get("/metrics")).text

    assert [d["route"] for d in answer["deliveries"]] == ["default", "prefect-event"]
    assert detail["state"] == "delivered"
    run, emission = detail["deliveries"]
    assert (run["route"], run["state"]) == ("default", "delivered")
    assert (emission["route"], emission["state"]) == ("prefect-event", "delivered")
    assert (emission["flow_run_id"], emission["flow_run_url"]) == (None, None)
    expected_id = str(uuid.uuid5(NAMESPACE, f"{body['execution_id']}/erathos.job.finished"))
    assert emission["idempotency_key"] == expected_id  # the Prefect event's id
    # Prefect's 204 (once it was read back), or, when its write came after the last read,
    # its 204 again and then the read that found it.
    last = emission["attempts_made"][-1]
    assert (last["outcome"], last["status_code"]) in (("delivered", 204), ("delivered", 200))
    assert len(server.flow_runs(flow_id)) == 1
    lines = metrics.splitlines()
    for kind in ("flow_run", "event"):
        series = f'connection="default",kind="{kind}",outcome="delivered"'
        assert f"erathos_bridge_deliveries_total{{{series}}} 1.0" in lines
    assert "erathos_bridge_event_to_flow_run_seconds_count 1.0" in lines  # flow runs only


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_load_no_route_wants_is_still_emitted_and_the_status_sums_up_the_emission(
    events_on: TargetSettings, prefect_with_services: PrefectServer
) -> None:
    server = prefect_with_services
    flow_id = server.create_flow(f"dbt-{uuid.uuid4().hex[:10]}")
    settings = events_on(server.api_url, flow_id)
    body = finished_now(status="FAILED")
    async with open_client(settings) as client:
        answer = await client.post("/webhooks/erathos", json=body, headers=auth())
        await settled(client, within=30)
        again = await client.post("/webhooks/erathos", json=body, headers=auth())

    assert answer.status_code == 202
    assert answer.json()["status"] in ("queued", "delivered")  # until Prefect has kept it
    assert "STATUS EQUAL 'FINISHED' does not hold" in answer.json()["reason"]
    assert again.json()["status"] == "delivered"
    [emission] = again.json()["deliveries"]
    assert (emission["route"], emission["state"]) == ("prefect-event", "delivered")
    assert server.flow_runs(flow_id) == []


@pytest.mark.anyio
async def test_a_load_of_a_job_outside_bridge_jobs_is_not_emitted(
    events_on: TargetSettings,
) -> None:
    settings = events_on(REFUSED_URL, str(uuid.uuid4()), jobs=JOB)
    async with open_client(settings) as client:
        answer = await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())

    assert (answer.json()["status"], answer.json()["deliveries"]) == ("ignored", [])
    assert answer.json()["reason"].endswith("is not in BRIDGE_JOBS")


@pytest.mark.anyio
async def test_without_bridge_prefect_events_there_is_no_emission_at_all(
    events_on: TargetSettings, prefect: PrefectServer, flow_id: str
) -> None:
    settings = events_on(prefect.api_url, flow_id, prefect_events=False)
    async with open_client(settings) as client:
        finished = await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
        failed = await client.post(
            "/webhooks/erathos", json=webhook_body(status="FAILED"), headers=auth()
        )
        report = await client.post("/simulate", json=webhook_body(), headers=auth(ADMIN_TOKEN))
        metrics = (await client.get("/metrics")).text

    assert [d["route"] for d in finished.json()["deliveries"]] == ["default"]
    assert (failed.json()["status"], failed.json()["deliveries"]) == ("ignored", [])
    routes = sorted(d.route for _, found in await stored_events(settings) for d in found)
    assert routes == ["default"]
    assert report.json()["prefect_events"] == []
    assert 'kind="event"' not in metrics


@pytest.mark.anyio
async def test_an_event_over_the_limit_is_a_dead_letter_with_the_reason_never_sent(
    events_on: TargetSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No event of Erathos's bounded fields comes near 1 MB: the limit is lowered instead.
    monkeypatch.setattr(app.routing.prefect_event, "MAX_EVENT_BYTES", 500)
    settings = events_on(REFUSED_URL, str(uuid.uuid4()), sync_wait="500ms")
    async with open_client(settings) as client:
        answer = (
            await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
        ).json()
        dead = (await client.get("/events?state=dead", headers=auth(ADMIN_TOKEN))).json()
        metrics = (await client.get("/metrics")).text

    run, emission = answer["deliveries"]
    assert run["state"] == "pending"  # the flow run still waits for Prefect
    assert (emission["state"], emission["attempts"]) == ("dead", 1)
    assert "over the 500 allowed: not sent" in emission["error"]
    assert answer["status"] == "failed"
    assert [e["id"] for e in dead["events"]] == [answer["event_id"]]
    series = 'connection="default",kind="event",reason="permanent"'
    assert f"erathos_bridge_dead_letters_total{{{series}}} 1.0" in metrics.splitlines()


@pytest.mark.anyio
async def test_an_emission_pending_when_events_are_turned_off_is_a_dead_letter_to_replay(
    events_on: TargetSettings, prefect: PrefectServer, flow_id: str
) -> None:
    down = events_on(REFUSED_URL, flow_id, sync_wait="200ms")
    async with open_client(down) as client:
        answer = (
            await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
        ).json()
    assert answer["status"] == "queued"

    off = events_on(prefect.api_url, flow_id, prefect_events=False)
    async with open_client(off) as client:
        await settled(client, within=20)
        detail = (
            await client.get(f"/events/{answer['event_id']}", headers=auth(ADMIN_TOKEN))
        ).json()

    states = {d["route"]: (d["state"], d["error"]) for d in detail["deliveries"]}
    assert states["default"] == ("delivered", None)
    assert states["prefect-event"][0] == "dead"
    assert "no longer emits Prefect events (BRIDGE_PREFECT_EVENTS" in states["prefect-event"][1]


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_routes_file_connection_with_events_true_emits_there(
    tmp_path: Path, events_on: TargetSettings, prefect_with_services: PrefectServer
) -> None:
    server = prefect_with_services
    flow_id = server.create_flow(f"dbt-{uuid.uuid4().hex[:10]}")
    routes = tmp_path / "routes.json"
    routes.write_text(
        json.dumps(
            {
                "connections": {"feed": {"api_url": server.api_url, "events": True}},
                "routes": [{"name": "dbt", "flow_id": flow_id}],
            }
        )
    )
    settings = events_on(
        server.api_url,
        flow_id,
        prefect_flow_id=None,
        routes_file=routes,
        prefect_events=False,  # the environment's connection emits nothing
    )
    async with open_client(settings) as client:
        answer = (
            await client.post("/webhooks/erathos", json=finished_now(), headers=auth())
        ).json()
        await settled(client, within=30)
        detail = (
            await client.get(f"/events/{answer['event_id']}", headers=auth(ADMIN_TOKEN))
        ).json()
        report = (
            await client.post("/simulate", json=webhook_body(), headers=auth(ADMIN_TOKEN))
        ).json()

    states = [(d["route"], d["connection"], d["state"]) for d in detail["deliveries"]]
    assert states == [("dbt", "default", "delivered"), ("prefect-event:feed", "feed", "delivered")]
    [shown] = report["prefect_events"]
    assert (shown["route"], shown["connection"]) == ("prefect-event:feed", "feed")


@pytest.mark.parametrize(
    ("connection", "route", "message"),
    [
        ({"api_url": "http://p/api", "events": "yes"}, "a", "connections.feed.events:"),
        ({"api_url": "http://p/api"}, "prefect-event", "'prefect-event' is reserved"),
    ],
)
def test_events_must_be_a_boolean_and_the_emission_route_is_reserved(
    tmp_path: Path,
    make_settings: SettingsFactory,
    connection: dict[str, Any],
    route: str,
    message: str,
) -> None:
    from app.service import configure

    routes = tmp_path / "routes.json"
    document = {
        "connections": {"feed": connection},
        "routes": [{"name": route, "connection": "feed", "flow_id": str(uuid.uuid4())}],
    }
    routes.write_text(json.dumps(document))
    settings = make_settings(routes_file=routes, prefect_flow_id=None)

    with pytest.raises(ConfigurationError, match=message):
        configure(settings)


def test_bridge_prefect_events_needs_the_environments_prefect(
    tmp_path: Path, make_settings: SettingsFactory
) -> None:
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"routes": [{"name": "a", "flow_id": str(uuid.uuid4())}]}))

    with pytest.raises(ValueError, match="BRIDGE_PREFECT_EVENTS: needs PREFECT_API_URL"):
        make_settings(
            prefect_api_url=None, prefect_flow_id=None, routes_file=routes, prefect_events=True
        )


@pytest.mark.anyio
async def test_simulate_shows_the_event_that_would_be_emitted_with_secrets_masked(
    events_on: TargetSettings,
) -> None:
    settings = events_on("http://prefect:4200/api", str(uuid.uuid4()), prefect_api_key="pnu_secret")
    body = erathos(status="FAILED")
    async with open_client(settings) as client:
        report = (await client.post("/simulate", json=body, headers=auth(ADMIN_TOKEN))).json()

    [emission] = report["prefect_events"]
    assert emission["route"] == "prefect-event"
    request = emission["request"]
    assert (request["method"], request["url"]) == ("POST", "http://prefect:4200/api/events")
    assert request["headers"]["authorization"] == "Bearer ********"
    assert request["body"] == [prefect_event(stored(body))]
    assert "refused" not in emission
    assert "pnu_secret" not in json.dumps(report)


def test_the_cli_simulate_shows_it_too(
    cli_environment: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_environment.setenv("PREFECT_API_URL", "http://prefect:4200/api")
    cli_environment.setenv("PREFECT_FLOW_ID", str(uuid.uuid4()))
    cli_environment.setenv("BRIDGE_PREFECT_EVENTS", "true")
    event = tmp_path / "event.json"
    event.write_text(json.dumps(erathos()))

    assert main(["simulate", str(event)]) == 0

    [emission] = json.loads(capsys.readouterr().out)["prefect_events"]
    assert emission["request"]["url"] == "http://prefect:4200/api/events"
    assert emission["request"]["body"] == [prefect_event(stored(erathos()))]


CLOUD = "https://api.prefect.cloud/api/accounts/0f6a9b9e/workspaces/7c2d4e1f"


@pytest.mark.anyio
async def test_on_prefect_cloud_an_emission_carries_the_key_under_the_workspace_path() -> None:
    seen, handler = recording(lambda _: httpx.Response(204))
    request = emission_request(stored(erathos()))
    async with mock_connection(handler, api_url=CLOUD, api_key=SecretStr("pnu_key")) as cloud:
        emitted = await cloud.emit_events(request)

    assert emitted.outcome is Outcome.DELIVERED
    [sent] = seen
    assert (sent.method, str(sent.url)) == ("POST", f"{CLOUD}/events")
    assert sent.headers["authorization"] == "Bearer pnu_key"


@pytest.mark.anyio
async def test_a_self_hosted_server_with_auth_takes_the_emission_with_basic_auth(
    events_on: TargetSettings,
    guarded_prefect: PrefectServer,
    guarded_flow_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app.delivery.readback, "READ_WAITS", (0.2,))
    flow_id = guarded_flow_id
    right = events_on(guarded_prefect.api_url, flow_id, prefect_api_auth_string=AUTH_STRING)
    wrong = events_on(guarded_prefect.api_url, flow_id, prefect_api_auth_string="admin:wrong")
    async with open_client(right) as client:
        accepted = (
            await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
        ).json()
    async with open_client(wrong) as client:
        refused = (
            await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
        ).json()

    run, emission = accepted["deliveries"]
    assert (run["route"], run["state"]) == ("default", "delivered")
    # Taken (204), and read back with the same credentials: this server runs without its
    # services, so it kept nothing, and the emission waits to be sent again.
    assert (emission["route"], emission["state"]) == ("prefect-event", "pending")
    assert emission["error"].startswith("Prefect answered HTTP 204 but had not kept the event")
    [emission] = [d for d in refused["deliveries"] if d["route"] == "prefect-event"]
    assert (emission["state"], emission["error"]) == ("dead", "HTTP 401: Unauthorized")


# -- against a real Prefect server with its services ---------------------------------------


def finished_now(**fields: Any) -> dict[str, str]:
    """A load that finished this minute: its event is well inside Prefect's read window
    and retention, whatever the date the suite runs on."""
    now = datetime.now(UTC)
    when = {"finished_at_date": now.strftime("%Y-%m-%d"), "finished_at_time": now.strftime("%H:%M")}
    return webhook_body(**(when | fields))


def events_of_job(server: PrefectServer, job_id: str) -> list[dict[str, Any]]:
    """Every event Prefect persisted for one Erathos job (by its resource id)."""
    query = {"filter": {"resource": {"id": [f"erathos.job.{job_id}"]}}, "limit": 50}
    found: dict[str, Any] = server.request("POST", "events/filter", query)
    assert found["total"] == len(found["events"])
    events: list[dict[str, Any]] = found["events"]
    return events


def label_query(server: PrefectServer, **labels: str) -> list[dict[str, Any]]:
    """Prefect's events whose resource has these labels (as an automation matches them)."""
    specification = {name: [value] for name, value in labels.items()}
    query = {
        "filter": {
            "event": {"name": ["erathos.job.finished"]},
            "resource": {"labels": specification},
        },
        "limit": 50,
    }
    events: list[dict[str, Any]] = server.request("POST", "events/filter", query)["events"]
    return events


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_webhook_makes_one_prefect_event_readable_by_its_documented_labels(
    events_on: TargetSettings, prefect_with_services: PrefectServer
) -> None:
    server = prefect_with_services
    flow_id = server.create_flow(f"dbt-{uuid.uuid4().hex[:10]}")
    settings = events_on(server.api_url, flow_id)
    body = finished_now()
    async with open_client(settings) as client:
        answer = (await client.post("/webhooks/erathos", json=body, headers=auth())).json()
        # A Prefect busy with its services may answer 503 at first: retried.
        await settled(client, within=30)
        detail = (
            await client.get(f"/events/{answer['event_id']}", headers=auth(ADMIN_TOKEN))
        ).json()
    states = {d["route"]: d["state"] for d in detail["deliveries"]}
    assert states == {"default": "delivered", "prefect-event": "delivered"}

    def arrived() -> bool:
        return len(label_query(server, **{"erathos.execution.id": body["execution_id"]})) == 1

    await eventually(arrived, within=30, what="the event in Prefect", every=0.5)
    [event] = label_query(
        server,
        **{
            "erathos.table.name": "orders",
            "erathos.schema.name": "raw_shop",
            "erathos.connection.id": body["connection_id"],
            "erathos.execution.id": body["execution_id"],
            "erathos.status": "FINISHED",
        },
    )
    assert event["id"] == str(uuid.uuid5(NAMESPACE, f"{body['execution_id']}/erathos.job.finished"))
    assert event["resource"]["prefect.resource.id"] == f"erathos.job.{body['job_id']}"
    assert event["resource"]["prefect.resource.name"] == "raw_shop.orders"
    assert event["resource"]["erathos.job.id"] == body["job_id"]
    assert event["resource"]["erathos.connection.name"] == "Shop Postgres"
    roles = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in event["related"]}
    assert roles == {
        "connection": f"erathos.connection.{body['connection_id']}",
        "table": f"erathos.table.{body['connection_id']}.raw_shop.orders",
    }
    assert (event["payload"]["rows"], event["payload"]["nested_table"]) == (1520, False)
    occurred = datetime.fromisoformat(event["occurred"])
    finished = f"{body['finished_at_date']}T{body['finished_at_time']}:00+00:00"
    assert occurred == datetime.fromisoformat(finished)


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_redelivered_webhook_makes_no_second_event(
    events_on: TargetSettings, prefect_with_services: PrefectServer
) -> None:
    server = prefect_with_services
    flow_id = server.create_flow(f"dbt-{uuid.uuid4().hex[:10]}")
    settings = events_on(server.api_url, flow_id)
    job = str(uuid.uuid4())
    body, later = finished_now(job_id=job), finished_now(job_id=job)
    async with open_client(settings) as client:
        first = await client.post("/webhooks/erathos", json=body, headers=auth())
        again = await client.post("/webhooks/erathos", json=body, headers=auth())
        # A later load of the same job: once Prefect shows it, it has persisted whatever
        # the redelivery could have emitted before it.
        await client.post("/webhooks/erathos", json=later, headers=auth())
        await settled(client, within=30)

    assert (again.status_code, again.json()["duplicate"]) == (200, True)
    ids = {(d["id"], d["route"]) for d in first.json()["deliveries"]}
    assert {(d["id"], d["route"]) for d in again.json()["deliveries"]} == ids
    stored_routes = [[d.route for d in found] for _, found in await stored_events(settings)]
    assert stored_routes == [["default", "prefect-event"]] * 2  # the first load, and the later

    await eventually(
        lambda: len(events_of_job(server, job)) >= 2, within=30, what="both loads' events"
    )
    emitted = sorted(e["id"] for e in events_of_job(server, job))
    assert emitted == sorted(
        str(uuid.uuid5(NAMESPACE, f"{b['execution_id']}/erathos.job.finished"))
        for b in (body, later)
    )


@pytest.mark.slow
@pytest.mark.anyio
async def test_events_queued_while_prefect_is_down_are_emitted_once_it_is_back(
    events_on: TargetSettings, prefect_with_services: PrefectServer
) -> None:
    server = prefect_with_services
    flow_id = server.create_flow(f"dbt-{uuid.uuid4().hex[:10]}")
    proxy = FaultProxy(f"http://127.0.0.1:{server.port}")
    await proxy.start()
    settings = events_on(f"{proxy.url}/api", flow_id, sync_wait="200ms", prefect_timeout="2s")
    job = str(uuid.uuid4())
    bodies = [finished_now(job_id=job, table_name=f"t{i}") for i in range(3)]
    try:
        proxy.down = True
        async with open_client(settings) as client:
            answers = [
                (await client.post("/webhooks/erathos", json=b, headers=auth())).json()
                for b in bodies
            ]
            assert {a["status"] for a in answers} == {"queued"}
            assert events_of_job(server, job) == []

            proxy.down = False
            await settled(client, within=30)
            await eventually(
                lambda: len(events_of_job(server, job)) == 3,
                within=30,
                what="the queued events in Prefect",
                every=0.5,
            )
    finally:
        await proxy.stop()

    tables = sorted(e["resource"]["erathos.table.name"] for e in events_of_job(server, job))
    assert tables == ["t0", "t1", "t2"]
    assert len(server.flow_runs(flow_id)) == 3


@pytest.mark.anyio
async def test_an_empty_204_delivers_an_emission_and_is_still_no_flow_run() -> None:
    sent: list[httpx.Request] = []

    def prefect_answers(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    request = emission_request(stored(erathos()))
    async with mock_connection(prefect_answers) as connection:
        emitted = await connection.emit_events(request)
        created = await connection.create_flow_run(PrefectRequest("flow_runs/", {}))

    assert (emitted.outcome, emitted.status_code, emitted.flow_run_id) == (
        Outcome.DELIVERED,
        204,
        None,
    )
    assert (created.outcome, created.error) == (
        Outcome.PERMANENT,
        "Prefect answered without a flow run id",
    )
    assert str(sent[0].url) == f"{STUB_API_URL}/events"
    assert json.loads(sent[0].content) == request.body

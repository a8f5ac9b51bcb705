"""What the CLI shows, said as the API says it: times in ISO 8601 UTC, ``simulate``'s
refusals with the webhook's own messages (from a file or stdin), why an event has
nothing to replay, attempts counted and numbered across replays, and what it refuses.
No Prefect needed: the events are ignored, or stay queued, or die."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli import main
from app.config import load_settings
from app.service import open_bridge
from app.storage.records import EventState
from tests.support.erathos import webhook_body
from tests.support.inprocess import open_client
from tests.support.isotime import ISO_UTC, recent_iso_utc
from tests.support.tokens import ADMIN_TOKEN, auth
from tests.support.waiting import eventually


@pytest.fixture
def environment(cli_environment: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Prefect is never reachable here (nothing needs it); the admin API is on."""
    cli_environment.setenv("BRIDGE_ADMIN_TOKEN", ADMIN_TOKEN)
    # A failure bound: refused at once, an attempt is recorded before the answer (one
    # that may say "failed") even on a busy machine.
    cli_environment.setenv("BRIDGE_SYNC_WAIT", "20s")
    cli_environment.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    cli_environment.setenv("PREFECT_FLOW_ID", "5d3c35a6-9b1e-4a0e-9a57-2f7f2bd1c0de")
    return cli_environment


async def _post(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The webhook's answer to ``body``, and the admin API's listing afterwards."""
    async with open_client(load_settings()) as client:
        answer = await client.post("/webhooks/erathos", json=body, headers=auth())
        listing = await client.get("/events", headers=auth(ADMIN_TOKEN))
    return answer.json(), listing.json()


def test_events_says_when_none_match_and_json_prints_no_line(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_post(webhook_body(status="FAILED")))  # one event, no run failed
    capsys.readouterr()

    assert main(["events", "--run-state", "failed"]) == 0
    text = capsys.readouterr()
    assert main(["events", "--run-state", "failed", "--json"]) == 0
    as_json = capsys.readouterr()

    assert (text.out, text.err) == ("", "no events match\n")
    assert (as_json.out, as_json.err) == ("", "")


def test_events_shows_the_time_exactly_as_the_admin_api_does(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, listing = asyncio.run(_post(webhook_body(status="FAILED")))
    [api_event] = listing["events"]
    capsys.readouterr()

    assert main(["events", "--json"]) == 0
    [as_json] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["events"]) == 0
    as_text = capsys.readouterr().out.splitlines()[0]

    assert recent_iso_utc(as_json["received_at"])
    assert as_json["received_at"] == api_event["received_at"]
    assert as_text.startswith(f"{api_event['received_at']}  event {api_event['id']}")
    assert ISO_UTC.fullmatch(as_text.split()[0])


def test_simulate_names_every_invalid_field_as_the_webhook_does(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    body = webhook_body(rows="many", finished_at_time="25:99")
    del body["execution_id"]
    answer, _ = asyncio.run(_post(body))
    event = tmp_path / "event.json"
    event.write_text(json.dumps(body))
    capsys.readouterr()

    code = main(["simulate", str(event)])

    error = answer["error"]
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"erathos-prefect-bridge: {event}: {error['message']}",
        *(f"  {f['field']}: {f['message']}" for f in error["fields"]),
    ]
    assert {f["field"] for f in error["fields"]} == {"execution_id", "rows", "finished_at_time"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b'{"execution_id": ', "the body is not valid JSON", id="not-json"),
        pytest.param(b'{"status": "FINISHED", "status": "FAILED"}', "duplicate key", id="dup"),
        pytest.param(b"[]", "invalid body", id="not-an-object"),
    ],
)
def test_simulate_refuses_what_the_webhook_refuses_and_reads_stdin(
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    body: bytes,
    expected: str,
) -> None:
    environment.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(body)))

    code = main(["simulate", "-"])

    assert code == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("erathos-prefect-bridge: stdin: ")
    assert expected in first


def test_simulate_dash_reads_the_event_from_stdin(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    body = webhook_body(status="FAILED")
    environment.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(json.dumps(body).encode())))

    code = main(["simulate", "-"])

    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["execution_id"] == body["execution_id"]
    [route] = report["routes"]
    assert route["matches"] is False
    assert "STATUS EQUAL 'FINISHED' does not hold" in route["reason"]


def test_replaying_an_ignored_event_says_why_there_is_nothing_to_replay(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answer, _ = asyncio.run(_post(webhook_body(status="FAILED")))
    capsys.readouterr()

    code = main(["replay", answer["event_id"]])

    out = capsys.readouterr()
    assert code == 1
    assert out.out == ""
    assert out.err.strip() == f"nothing to replay: the event was ignored: {answer['reason']}"


@pytest.mark.parametrize("limit", ["0", "-3", "ten"])
def test_events_refuses_a_limit_that_is_not_1_or_more(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], limit: str
) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["events", "--limit", limit])

    assert refused.value.code == 2
    assert "argument --limit:" in capsys.readouterr().err


def test_replaying_an_event_whose_deliveries_are_all_pending_says_why(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answer, _ = asyncio.run(_post(webhook_body()))  # Prefect unreachable: queued
    assert answer["status"] == "queued"
    capsys.readouterr()

    code = main(["replay", answer["event_id"]])
    out = capsys.readouterr()
    refused = asyncio.run(_replay_by_api(answer["event_id"]))

    why = "nothing to replay: every delivery is still pending: each is retried by itself"
    assert (code, out.out, out.err.strip()) == (1, "", why)
    assert refused.status_code == 409
    assert refused.json()["error"]["message"] == why


async def _replay_by_api(event_id: str) -> httpx.Response:
    async with open_client(load_settings()) as client:
        return await client.post(f"/events/{event_id}/replay", headers=auth(ADMIN_TOKEN))


def test_attempts_are_counted_and_numbered_across_replays(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    environment.setenv("BRIDGE_MAX_ATTEMPTS", "1")  # Prefect unreachable: dead at once
    answer, _ = asyncio.run(_post(webhook_body()))
    assert answer["status"] == "failed"
    for _ in range(2):
        assert main(["replay", answer["event_id"]]) == 0
        asyncio.run(_settle())
    capsys.readouterr()

    assert main(["events", "--json"]) == 0
    [listed] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["events"]) == 0
    shown = capsys.readouterr().out
    detail = asyncio.run(_event_by_api(answer["event_id"]))

    [delivery] = listed["deliveries"]
    assert (delivery["state"], delivery["attempts"]) == ("dead", 3)
    assert "  dead  attempts 3  " in shown
    [made] = detail["deliveries"]
    assert made["attempts"] == 3
    assert [a["number"] for a in made["attempts_made"]] == [1, 2, 3]


async def _event_by_api(event_id: str) -> dict[str, Any]:
    async with open_client(load_settings()) as client:
        found = await client.get(f"/events/{event_id}", headers=auth(ADMIN_TOKEN))
    detail: dict[str, Any] = found.json()
    return detail


async def _settle() -> None:
    """Run the service until nothing is pending (what a running service does by itself)."""
    async with open_bridge(load_settings()) as bridge:

        async def settled() -> bool:
            return not await bridge.history.list_events(state=EventState.PENDING, limit=1)

        await eventually(settled, within=30, what="every delivery settled")

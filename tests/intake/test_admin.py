"""The admin API exists only with BRIDGE_ADMIN_TOKEN, and only that token opens it."""

from __future__ import annotations

import pytest

from tests.support.erathos import webhook_body
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.isotime import recent_iso_utc
from tests.support.tokens import ADMIN_TOKEN, TOKEN, auth

pytestmark = pytest.mark.anyio


async def test_without_an_admin_token_the_admin_endpoints_do_not_exist(
    make_settings: SettingsFactory,
) -> None:
    async with open_client(make_settings()) as client:
        listing = await client.get("/events", headers=auth(TOKEN))
        simulate = await client.post("/simulate", json={}, headers=auth(TOKEN))

    assert (listing.status_code, simulate.status_code) == (404, 404)
    assert listing.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/events"),
        ("GET", "/events/x"),
        ("POST", "/deliveries/x/replay"),
        ("POST", "/events/x/replay"),
        ("POST", "/simulate"),
    ],
)
async def test_the_webhook_token_does_not_open_the_admin_api(
    make_settings: SettingsFactory, method: str, path: str
) -> None:
    async with open_client(make_settings(admin_token=ADMIN_TOKEN)) as client:
        refused = await client.request(method, path, headers=auth(TOKEN))
        anonymous = await client.request(method, path)

    assert (refused.status_code, anonymous.status_code) == (401, 401)


async def test_the_admin_token_does_not_open_the_webhook(make_settings: SettingsFactory) -> None:
    body = webhook_body()
    async with open_client(make_settings(admin_token=ADMIN_TOKEN)) as client:
        response = await client.post("/webhooks/erathos", json=body, headers=auth(ADMIN_TOKEN))

    assert response.status_code == 401


async def test_simulate_reports_the_default_route_without_sending(
    make_settings: SettingsFactory,
) -> None:
    body = webhook_body(status="FAILED")
    async with open_client(make_settings(admin_token=ADMIN_TOKEN)) as client:
        report = await client.post("/simulate", json=body, headers=auth(ADMIN_TOKEN))
        events = await client.get("/events", headers=auth(ADMIN_TOKEN))

    [route] = report.json()["routes"]
    assert route["route"] == "default"
    assert route["matches"] is False
    assert "STATUS EQUAL 'FINISHED' does not hold" in route["reason"]
    assert events.json()["events"] == []


async def test_times_are_iso_8601_utc_and_attempts_is_the_count_everywhere(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(
        admin_token=ADMIN_TOKEN, prefect_api_url="http://127.0.0.1:9/api", sync_wait="100ms"
    )
    async with open_client(settings) as client:
        sent = await client.post("/webhooks/erathos", json=webhook_body(), headers=auth())
        event_id = sent.json()["event_id"]
        listing = await client.get("/events", headers=auth(ADMIN_TOKEN))
        detail = await client.get(f"/events/{event_id}", headers=auth(ADMIN_TOKEN))

    [listed] = listing.json()["events"]
    [summary] = listed["deliveries"]
    [delivery] = detail.json()["deliveries"]
    assert recent_iso_utc(listed["received_at"])
    assert listed["received_at"] == detail.json()["received_at"]
    for shown in (summary, delivery):
        assert recent_iso_utc(shown["created_at"])
        assert recent_iso_utc(shown["next_attempt_at"])  # pending: Prefect is unreachable
    # The listing loads no attempts: it shows their count, never an empty list beside it.
    assert "attempts_made" not in summary
    assert summary["attempts"] == delivery["attempts"] == len(delivery["attempts_made"]) >= 1
    assert all(recent_iso_utc(a["started_at"]) for a in delivery["attempts_made"])


async def test_replaying_an_ignored_event_answers_409_with_the_reason(
    make_settings: SettingsFactory,
) -> None:
    async with open_client(make_settings(admin_token=ADMIN_TOKEN)) as client:
        ignored = await client.post(
            "/webhooks/erathos", json=webhook_body(status="FAILED"), headers=auth()
        )
        event_id = ignored.json()["event_id"]
        replay = await client.post(f"/events/{event_id}/replay", headers=auth(ADMIN_TOKEN))

    assert ignored.json()["status"] == "ignored"
    assert replay.status_code == 409
    error = replay.json()["error"]
    assert error["code"] == "conflict"
    assert error["message"] == (
        f"nothing to replay: the event was ignored: {ignored.json()['reason']}"
    )
    assert "STATUS EQUAL 'FINISHED' does not hold" in error["message"]

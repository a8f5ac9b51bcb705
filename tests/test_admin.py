"""The admin API exists only with BRIDGE_ADMIN_TOKEN, and only that token opens it."""

from __future__ import annotations

import pytest

from tests.conftest import ADMIN_TOKEN, TOKEN, SettingsFactory, auth, open_client
from tests.erathos import webhook_body

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

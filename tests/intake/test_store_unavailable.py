"""When the store cannot commit, nothing is acknowledged: 503, and no trace of the event."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.support.erathos import webhook_body
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.tokens import ADMIN_TOKEN, auth

pytestmark = pytest.mark.anyio


async def test_a_store_that_cannot_commit_answers_503_and_acknowledges_nothing(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(db_lock_timeout="200ms", admin_token=ADMIN_TOKEN)
    body = webhook_body(status="FAILED")
    async with open_client(settings) as client:
        # Another process holds the database's write lock past our lock timeout.
        locker = sqlite3.connect(tmp_path / "bridge.db", isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            refused = await client.post("/webhooks/erathos", json=body, headers=auth())
            not_ready = await client.get("/readyz", headers=auth(ADMIN_TOKEN))
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        accepted = await client.post("/webhooks/erathos", json=body, headers=auth())
        ready = await client.get("/readyz", headers=auth(ADMIN_TOKEN))
        stored = await client.get("/events", headers=auth(ADMIN_TOKEN))

    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "store_unavailable"
    assert refused.headers["retry-after"] == "5"
    assert (not_ready.status_code, not_ready.json()["store"]["writable"]) == (503, False)
    # The same execution afterwards is new to the store (202, not a 200 duplicate).
    assert accepted.status_code == 202
    assert ready.status_code == 200
    assert [e["execution_id"] for e in stored.json()["events"]] == [body["execution_id"]]


async def test_readiness_reports_prefect_down_but_stays_ready(
    make_settings: SettingsFactory,
) -> None:
    async with open_client(
        make_settings(prefect_api_url="http://127.0.0.1:9/api", admin_token=ADMIN_TOKEN)
    ) as client:
        response = await client.get("/readyz", headers=auth(ADMIN_TOKEN))

    assert response.status_code == 200
    [prefect] = response.json()["prefect"]
    assert prefect["reachable"] is False
    assert "unreachable" in prefect["detail"]

"""The auth matrix: every route of the app, every kind of wrong credential.

Health, readiness, metrics, the API docs and the front door (``/``) are the only open
routes; the webhook and the
Prefect-shaped endpoints take only a webhook token; the admin API only the admin token
(and does not exist without one); the console, mounted at /ui, only its session cookie
(tests/console/test_console.py). A new route fails this test until it is classified."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from fastapi.routing import APIRoute

from app.intake import admin_router, dropin_router, sets_router, webhook_router
from app.main import create_app
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.tokens import ADMIN_TOKEN, TOKEN, auth

pytestmark = pytest.mark.anyio

OPEN = {
    "/",  # the front door: a redirect to the console, or a map of these paths
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/assets",  # Swagger UI's and ReDoc's own files, served by the service
    "/redoc",
}
WEBHOOK = {
    r.path for r in [*webhook_router.routes, *dropin_router().routes] if isinstance(r, APIRoute)
}
ADMIN = {r.path for r in [*admin_router.routes, *sets_router.routes] if isinstance(r, APIRoute)}
CONSOLE = {"/ui"}  # its own app: every page but sign-in answers a session cookie only

WRONG = {
    "no credentials": {},
    "a wrong token": auth("x" * len(TOKEN)),
    "a shorter token": auth(TOKEN[:-1]),
    "a longer token": auth(TOKEN + "x"),
    "an empty bearer": {"Authorization": "Bearer"},
    "basic instead of bearer": {"Authorization": f"Basic {TOKEN}"},
    "the token without a scheme": {"Authorization": TOKEN},
}


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)


def all_paths(routes: list[Any]) -> set[str]:
    """Every path the app serves, through FastAPI's included routers."""
    paths: set[str] = set()
    for route in routes:
        if hasattr(route, "original_router"):
            paths |= all_paths(route.original_router.routes)
        else:
            paths.add(route.path)
    return paths


def test_the_prefect_shaped_endpoints_do_not_exist_unless_turned_on(
    make_settings: SettingsFactory,
) -> None:
    paths = all_paths(create_app(make_settings(admin_token=ADMIN_TOKEN)).routes)

    assert not paths & {r.path for r in dropin_router().routes if isinstance(r, APIRoute)}


def test_every_route_is_classified(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings(admin_token=ADMIN_TOKEN, dropin=True))
    paths = all_paths(app.routes)

    classified = OPEN | WEBHOOK | ADMIN | CONSOLE
    assert paths <= classified, paths - classified
    assert paths >= WEBHOOK
    assert paths >= ADMIN
    assert paths >= CONSOLE


@pytest.mark.parametrize("wrong", list(WRONG), ids=list(WRONG))
async def test_no_route_but_the_open_ones_answers_without_its_token(
    make_settings: SettingsFactory, wrong: str
) -> None:
    async with open_client(make_settings(admin_token=ADMIN_TOKEN, dropin=True)) as client:
        for path in sorted(WEBHOOK | ADMIN):
            reads = ("/events", "/events/{event_id}", "/sets", "/sets/{name}/windows")
            method = "GET" if path in reads else "POST"
            response = await client.request(method, concrete(path), headers=WRONG[wrong], json={})
            assert response.status_code == 401, (wrong, path, response.status_code)
            assert response.headers["www-authenticate"] == "Bearer"


async def test_tokens_are_not_interchangeable_nor_read_from_the_query_string(
    make_settings: SettingsFactory,
) -> None:
    async with open_client(make_settings(admin_token=ADMIN_TOKEN, dropin=True)) as client:
        for path in sorted(WEBHOOK):
            admin_token = await client.post(concrete(path), headers=auth(ADMIN_TOKEN), json={})
            in_query = await client.post(concrete(path), params={"token": TOKEN}, json={})
            assert (admin_token.status_code, in_query.status_code) == (401, 401), path
        for path in sorted(ADMIN):
            reads = path.startswith(("/events", "/sets")) and "replay" not in path
            method = "GET" if reads else "POST"
            webhook_token = await client.request(method, concrete(path), headers=auth(), json={})
            in_query = await client.request(
                method, concrete(path), params={"token": ADMIN_TOKEN, "access_token": ADMIN_TOKEN}
            )
            assert (webhook_token.status_code, in_query.status_code) == (401, 401), path


async def test_the_right_token_passes_the_door(make_settings: SettingsFactory) -> None:
    async with open_client(make_settings(admin_token=ADMIN_TOKEN, dropin=True)) as client:
        webhook = await client.post("/webhooks/erathos", headers=auth(), json={})
        admin_listing = await client.get("/events", headers=auth(ADMIN_TOKEN))

    assert webhook.status_code == 422  # past authentication: the body is what is wrong
    assert admin_listing.status_code == 200


async def test_open_routes_need_nothing(make_settings: SettingsFactory) -> None:
    async with open_client(make_settings()) as client:
        for path in ("/healthz", "/readyz", "/openapi.json", "/docs", "/redoc"):
            assert (await client.get(path)).status_code == 200, path


async def test_the_openapi_page_documents_the_401(make_settings: SettingsFactory) -> None:
    async with open_client(make_settings(admin_token=ADMIN_TOKEN, dropin=True)) as client:
        schema = (await client.get("/openapi.json")).json()

    for path in WEBHOOK | ADMIN:
        for operation in schema["paths"][path].values():
            assert "401" in operation["responses"], path

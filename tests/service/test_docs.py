"""The API docs work with no internet: ``/docs`` and ``/redoc`` load every script, style
and icon from the service itself, never from a CDN."""

from __future__ import annotations

import re

import pytest

from tests.support.html import links_of
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.tokens import ADMIN_TOKEN

pytestmark = pytest.mark.anyio

# What each kind of asset must be answered as (a browser refuses a script sent as text/plain
# under X-Content-Type-Options: nosniff).
CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_page_loads_only_the_services_own_urls(
    make_settings: SettingsFactory, page: str
) -> None:
    async with open_client(make_settings()) as client:
        response = await client.get(page)
        urls = links_of(response.text)
        assets = {url: await client.get(url) for url in urls}

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    # No other host anywhere in the page: not in a tag, not in its script (fonts, validator).
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", response.text), response.text
    assert urls, "the page loads its script from somewhere"
    assert all(url.startswith("/docs/assets/") for url in urls), urls
    for url, asset in assets.items():
        suffix = url[url.rindex(".") :]
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].startswith(CONTENT_TYPES[suffix]), url
        assert len(asset.content) > 1000, url


async def test_the_docs_pages_load_the_services_own_schema(make_settings: SettingsFactory) -> None:
    async with open_client(make_settings()) as client:
        swagger = (await client.get("/docs")).text
        redoc = (await client.get("/redoc")).text
        schema = await client.get("/openapi.json")

    assert "url: '/openapi.json'" in swagger
    assert '"validatorUrl": null' in swagger  # Swagger UI would send it to swagger.io
    assert 'spec-url="/openapi.json"' in redoc
    assert schema.status_code == 200
    assert schema.headers["content-type"] == "application/json"


async def test_the_assets_directory_lists_nothing_and_serves_nothing_else(
    make_settings: SettingsFactory,
) -> None:
    async with open_client(make_settings()) as client:
        listing = await client.get("/docs/assets/")
        outside = await client.get("/docs/assets/../__init__.py")
        escaped = await client.get("/docs/assets/%2e%2e/__init__.py")

    assert (listing.status_code, outside.status_code, escaped.status_code) == (404, 404, 404)


async def test_the_first_address_maps_the_service_when_the_console_is_off(
    make_settings: SettingsFactory,
) -> None:
    async with open_client(make_settings()) as client:
        response = await client.get("/")
        answers = {
            name: await client.get(path)
            for name, path in (
                ("docs", response.json()["docs"]),
                ("healthz", response.json()["healthz"]),
            )
        }

    assert response.status_code == 200
    assert response.json()["webhook"] == "POST /webhooks/erathos"
    assert response.json()["readyz"] == "/readyz"
    assert {name: a.status_code for name, a in answers.items()} == {"docs": 200, "healthz": 200}


async def test_the_first_address_leads_to_the_console_when_it_is_on(
    make_settings: SettingsFactory,
) -> None:
    async with open_client(make_settings(admin_token=ADMIN_TOKEN)) as client:
        response = await client.get("/", headers={"Host": "evil.example"})
        console = await client.get(response.headers["location"], follow_redirects=True)

    assert response.status_code == 303
    assert response.headers["location"] == "/ui/"  # a path: never the request's Host
    assert console.status_code == 200
    assert "sign" in console.text.lower()

"""The app factory: ``create_app(settings)`` builds the FastAPI app; its lifespan owns
every resource (store, Prefect clients, dispatcher) through :func:`open_bridge`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from app import __version__
from app.config import Settings
from app.console import console_app
from app.errors import install_error_handlers
from app.intake import admin_router, dropin_router, health_router, sets_router, webhook_router
from app.logs import RequestContext
from app.server.forwarded import ForwardedClient
from app.service import Bridge, open_bridge

# Swagger UI and ReDoc are served from the fastapi-offline package's files, never from a
# CDN: the API docs work where the service has no internet (and load nothing from
# elsewhere).
DOCS_ASSETS = "/docs/assets"
DOCS_ASSET_PACKAGE = ("fastapi_offline", "static")


class State(TypedDict):
    bridge: Bridge


def create_app(settings: Settings, *, clock: Callable[[], float] = time.time) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        async with open_bridge(settings, clock=clock) as bridge:
            yield {"bridge": bridge}

    app = FastAPI(
        title="erathos-prefect-bridge",
        version=__version__,
        summary="Erathos job-completion webhooks in, Prefect flow runs out: durably, exactly once.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load their scripts from a CDN: ours are below
        redoc_url=None,
        # Starlette's redirect to the path with(out) its trailing slash is absolute, built
        # from the Host header: any host a client names would be sent back to it.
        redirect_slashes=False,
    )
    install_error_handlers(app)
    app.add_middleware(RequestContext)
    # Outermost: the request's client and scheme are settled before anything reads them.
    app.add_middleware(ForwardedClient, trusted=settings.trusted_proxies)
    app.include_router(webhook_router)
    app.include_router(health_router)
    if settings.dropin:
        # Prefect-shaped endpoints (off by default) forward to the environment's connection.
        app.include_router(dropin_router(settings.dropin_allow_fields))
    if settings.admin_token is not None:
        # Without an admin token the admin endpoints and the console do not exist at all.
        app.include_router(admin_router)
        app.include_router(sets_router)
        app.mount("/ui", console_app(settings), name="console")

        @app.get("/ui", include_in_schema=False)
        async def console_home(request: Request) -> RedirectResponse:
            # Relative: a Location built from the Host header could name any site.
            return RedirectResponse(f"{request.scope.get('root_path', '')}/ui/", 307)

    install_docs(app)
    install_front_door(app, console=settings.admin_token is not None)
    return app


def install_front_door(app: FastAPI, *, console: bool) -> None:
    """``GET /``, the address a newcomer opens first: the console when it is on, else a
    map of what this service answers. Never a 404."""

    @app.get("/", include_in_schema=False, response_model=None)
    async def front_door(request: Request) -> RedirectResponse | dict[str, str]:
        root = request.scope.get("root_path", "")
        if console:
            # A path, never an absolute URL built from the request's Host header.
            return RedirectResponse(f"{root}/ui/", status_code=303)
        return {
            "service": "erathos-prefect-bridge",
            "version": __version__,
            "webhook": f"POST {root}/webhooks/erathos",
            "docs": f"{root}/docs",
            "healthz": f"{root}/healthz",
            "readyz": f"{root}/readyz",
            "console": "off: set BRIDGE_ADMIN_TOKEN to turn on the console at /ui/",
        }


def install_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc``, with their scripts, styles and icon served
    by the service itself under DOCS_ASSETS."""
    app.mount(DOCS_ASSETS, StaticFiles(packages=[DOCS_ASSET_PACKAGE]), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            # Swagger UI would otherwise send the schema to swagger.io's online validator.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )

"""The operator console at ``/ui/`` (only with ``BRIDGE_ADMIN_TOKEN``): what arrived,
what Prefect made of it, what is queued and why, and the dead letters to replay.

Server-rendered Jinja2 pages (``app/console/ui/templates``) with one stylesheet and one small
script (``app/console/ui/static``), all served by the service: no CDN, no build step. The pages
read the admin API's queries (:class:`app.storage.history.History`) and replay as it does.
Sign-in takes the admin token in a POST form and sets a signed session cookie
(:mod:`app.console.session`); every POST passes the same-origin check and carries the CSRF token
(:mod:`app.console.access`). This module builds the console's app: its headers, its
error pages, sign-in and sign-out; the pages are :mod:`app.console.pages`.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.console.access import (
    Console,
    ConsoleDep,
    FormDep,
    Refused,
    SignInRequired,
    client_of,
    console_of,
    first,
    read_form,
)
from app.console.pages import add_pages
from app.console.runs import duration_text, event_outcome, is_event, outcome_of
from app.console.session import COOKIE, SessionSigner, same_origin
from app.console.sets_page import add_set_pages
from app.console.views import BAR_WIDTH, iso, utc_text
from app.errors import StoreUnavailable
from app.server.limits import RateLimiter
from app.server.tokens import matching_token
from app.service import BridgeDep
from app.storage.records import event_run_state

UI = Path(__file__).parent / "ui"
# Wrong tokens, per client address: a burst of 10, then one a second. Addresses past the
# most recent SIGN_IN_CLIENTS are forgotten (which only gives them a fresh burst).
SIGN_IN_RATE, SIGN_IN_BURST, SIGN_IN_CLIENTS = 1.0, 10.0, 10_000
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def console_app(settings: Settings) -> FastAPI:
    """The console, to be mounted at ``/ui``."""
    assert settings.admin_token is not None  # mounted only with one
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(UI / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the page, and its test
    )
    environment.filters.update(iso=iso, utc=utc_text, duration=duration_text)
    environment.globals.update(
        BAR_WIDTH=BAR_WIDTH,
        outcome_of=outcome_of,
        event_outcome=event_outcome,
        is_event=is_event,
        run_of=event_run_state,
    )
    # No redirect to the path with(out) its trailing slash: Starlette's is absolute, built
    # from the Host header.
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, redirect_slashes=False)
    app.state.console = Console(
        SessionSigner(settings.admin_token, settings.console_session.total_seconds()),
        Jinja2Templates(env=environment),
        RateLimiter(SIGN_IN_RATE, SIGN_IN_BURST, max_keys=SIGN_IN_CLIENTS),
        settings.body_timeout.total_seconds(),
    )
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=UI / "static"), name="static")
    install_error_pages(app)
    add_sign_in(app)
    add_pages(app)
    add_set_pages(app)
    return app


class SecurityHeaders:
    """The strict CSP and its companions on every console answer; pages (not the static
    files) are never cached, as they show what only a signed-in operator may see."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith(f"{scope.get('root_path', '')}/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.decode().lower() not in SECURITY_HEADERS
                ]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def install_error_pages(app: FastAPI) -> None:
    def error_page(request: Request, status: int, message: str) -> HTMLResponse:
        context = {"status": status, "message": message}
        return console_of(request).page(request, "error.html", context, status)

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, _: SignInRequired) -> Response:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/sign-in", 303)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> Response:
        return error_page(request, exc.status, exc.message)

    @app.exception_handler(StoreUnavailable)
    async def _store(request: Request, _: StoreUnavailable) -> Response:
        return error_page(request, 503, "the store cannot be used right now: try again soon")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return error_page(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, _: RequestValidationError) -> Response:
        return error_page(request, 400, "the request is not one the console makes")


def add_sign_in(app: FastAPI) -> None:
    @app.get("/sign-in", response_class=HTMLResponse)
    async def sign_in_form(request: Request, console: ConsoleDep) -> Response:
        if console.signer.read(request.cookies.get(COOKIE)) is not None:
            return RedirectResponse(f"{request.scope.get('root_path', '')}/", 303)
        return console.page(request, "sign_in.html", {"message": None})

    @app.post("/sign-in", response_class=HTMLResponse)
    async def sign_in(request: Request, console: ConsoleDep, bridge: BridgeDep) -> Response:
        if not same_origin(request):
            raise Refused(403, "a form from another site was refused")
        form = await read_form(request, console)
        client = client_of(request)
        if console.failures.exhausted(client):
            # Refused before comparing: a guesser learns nothing while throttled. Other
            # clients (the operator) are not: the throttle is per address.
            message = "too many wrong tokens: wait a few seconds"
            return console.page(request, "sign_in.html", {"message": message}, 429)
        token = bridge.settings.admin_token
        presented = (first(form, "token") or "").strip().encode() or None
        if token is None or matching_token(presented, [token]) is None:
            console.failures.retry_after(client)  # a wrong token spends from the allowance
            message = "that is not the admin token"
            return console.page(request, "sign_in.html", {"message": message}, 401)
        _, cookie = console.signer.issue()
        base = request.scope.get("root_path", "")
        response = RedirectResponse(f"{base}/", 303)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=int(console.signer.lifetime),
            path=base or "/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/sign-out")
    async def sign_out(request: Request, _: FormDep) -> Response:
        base = request.scope.get("root_path", "")
        response = RedirectResponse(f"{base}/sign-in", 303)
        response.delete_cookie(COOKIE, path=base or "/", httponly=True, samesite="strict")
        return response

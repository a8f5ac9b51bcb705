"""The operator console at ``/ui/`` (only with ``BRIDGE_ADMIN_TOKEN``): what arrived,
what Prefect made of it, what is queued and why, and the dead letters to replay.

Server-rendered Jinja2 pages (``app/ui/templates``) with one stylesheet and one small
script (``app/ui/static``), all served by the service: no CDN, no build step. The pages
read the admin API's queries (:class:`app.history.History`) and replay as it does.
Sign-in takes the admin token in a POST form and sets a signed session cookie
(:mod:`app.session`); every POST passes the same-origin check and carries the CSRF token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

import jinja2
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__
from app.auth import matching_token
from app.console_views import (
    BAR_WIDTH,
    COUNT_ORDER,
    EventFilter,
    Masker,
    hourly_chart,
    iso,
    payload_fields,
    state_counts,
    target_of,
    utc_text,
)
from app.history import page_cursor
from app.limits import RateLimiter
from app.records import (
    DeliveryNotFound,
    DeliveryState,
    DeliveryStillPending,
    EventState,
    StoreUnavailable,
    event_state,
)
from app.service import Bridge, BridgeDep
from app.session import COOKIE, Session, SessionSigner, same_origin
from app.settings import Settings

UI = Path(__file__).parent / "ui"
DAY = 86400.0
SESSION_KEY = "console.session"
PAGE = 50
PENDING_SHOWN = 20
MAX_FORM_BYTES = 65536
# Wrong tokens, from every client together: a burst of 10, then one a second.
SIGN_IN_RATE, SIGN_IN_BURST = 1.0, 10.0
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


class SignInRequired(Exception):
    """No valid session: the browser is sent to the sign-in page."""


class Refused(Exception):
    """A request the console will not act on: shown as a page with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Console:
    """What the console keeps for its lifetime: the session signer, the templates and
    the wrong-token throttle."""

    signer: SessionSigner
    templates: Jinja2Templates
    failures: RateLimiter
    blocked_until: float = 0.0

    def page(
        self, request: Request, name: str, context: dict[str, Any], status: int = 200
    ) -> HTMLResponse:
        session: Session | None = request.scope.get(SESSION_KEY)
        base = request.scope.get("root_path", "")
        common = {
            "base": base,
            "version": __version__,
            "nav": None,
            "csrf": self.signer.csrf_token(session) if session else None,
        }
        return self.templates.TemplateResponse(request, name, common | context, status_code=status)


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


ConsoleDep = Annotated[Console, Depends(console_of)]


def signed_in(request: Request, console: ConsoleDep) -> Session:
    """The page's session, or off to the sign-in page."""
    session = console.signer.read(request.cookies.get(COOKIE))
    if session is None:
        raise SignInRequired()
    # In the scope, which is this request's own (``request.state`` may be the lifespan's
    # state, shared by every request).
    request.scope[SESSION_KEY] = session
    return session


SessionDep = Annotated[Session, Depends(signed_in)]


async def read_form(request: Request) -> dict[str, list[str]]:
    """A url-encoded form body (all a console form sends), size-capped."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise Refused(413, "the form is too large")
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if body and kind != "application/x-www-form-urlencoded":
        raise Refused(415, "the console takes its own forms only")
    form: dict[str, list[str]] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        form.setdefault(name, []).append(value)
    return form


async def posted(request: Request, console: ConsoleDep) -> dict[str, list[str]]:
    """A signed-in, same-origin POST carrying this session's CSRF token: its form."""
    if not same_origin(request):
        raise Refused(403, "a form from another site was refused")
    session = signed_in(request, console)
    form = await read_form(request)
    if not console.signer.csrf_valid(session, first(form, "csrf")):
        raise Refused(403, "the form's CSRF token is missing or wrong: reload the page")
    return form


FormDep = Annotated[dict[str, list[str]], Depends(posted)]


def first(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def console_app(settings: Settings) -> FastAPI:
    """The console, to be mounted at ``/ui``."""
    assert settings.admin_token is not None  # mounted only with one
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(UI / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the page, and its test
    )
    environment.filters.update(iso=iso, utc=utc_text)
    environment.globals.update(BAR_WIDTH=BAR_WIDTH)
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.console = Console(
        SessionSigner(settings.admin_token, settings.console_session.total_seconds()),
        Jinja2Templates(env=environment),
        RateLimiter(SIGN_IN_RATE, SIGN_IN_BURST),
    )
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=UI / "static"), name="static")
    install_error_pages(app)
    add_sign_in(app)
    add_pages(app)
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
        form = await read_form(request)
        now = time.monotonic()
        if now < console.blocked_until:
            # Refused before comparing: a guesser learns nothing while blocked.
            message = "too many wrong tokens: wait a few seconds"
            return console.page(request, "sign_in.html", {"message": message}, 429)
        token = bridge.settings.admin_token
        presented = (first(form, "token") or "").strip().encode() or None
        if token is None or matching_token(presented, [token]) is None:
            if (wait := console.failures.retry_after(0)) is not None:
                console.blocked_until = now + wait
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


def add_pages(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse)
    async def overview(
        request: Request, _: SessionDep, console: ConsoleDep, bridge: BridgeDep
    ) -> Response:
        now = bridge.history.clock()
        outcomes = await bridge.history.outcomes_since(now - DAY)
        pending = await bridge.history.pending_deliveries(limit=PENDING_SHOWN)
        queued = await bridge.history.pending_summary()
        connections = [
            {
                "name": name,
                "circuit": gate.circuit.value,
                "window": gate.limit,
                "in_flight": gate.in_flight,
                "pending": queued.get(name, (0, now))[0],
                "oldest": queued[name][1] if name in queued else None,
            }
            for name, gate in sorted(bridge.dispatcher.gates.items())
        ]
        context = {
            "nav": "overview",
            "counts": state_counts(outcomes),
            "chart": hourly_chart(outcomes, now - DAY, now),
            "pending": [(d, e, masker(bridge)(d.last_error)) for d, e in pending],
            "connections": connections,
            "now": now,
        }
        return console.page(request, "overview.html", context)

    @app.get("/events", response_class=HTMLResponse)
    async def events(
        request: Request, _: SessionDep, console: ConsoleDep, bridge: BridgeDep
    ) -> Response:
        wanted = EventFilter.of(request.query_params)
        page = []
        if not wanted.errors:
            page = await bridge.history.list_events(
                state=wanted.state,
                job_id=wanted.job,
                table_name=wanted.table,
                execution_id_contains=wanted.text,
                since=wanted.since,
                until=wanted.until,
                before=wanted.before,
                limit=PAGE,
            )
        context = {
            "nav": "events",
            "filter": wanted,
            "states": [s.value for s in COUNT_ORDER],
            "rows": [(e, found, event_state(found)) for e, found in page],
            "older": wanted.query(cursor=page_cursor(page[-1][0])) if len(page) == PAGE else None,
            "mask": masker(bridge),
        }
        status = 400 if wanted.errors else 200
        return console.page(request, "events.html", context, status)

    @app.get("/events/{event_id}", response_class=HTMLResponse)
    async def event(
        event_id: str, request: Request, _: SessionDep, console: ConsoleDep, bridge: BridgeDep
    ) -> Response:
        found = await bridge.history.get_event(event_id[:64])
        if found is None:
            raise Refused(404, f"no event {event_id[:64]}")
        stored, deliveries = found
        tried = await bridge.history.attempts_of([d.id for d in deliveries])
        context = {
            "nav": "events",
            "event": stored,
            "state": event_state(deliveries),
            "fields": payload_fields(stored.payload),
            "deliveries": [
                (d, target_of(bridge.router, d), [a for a in tried if a.delivery_id == d.id])
                for d in deliveries
            ],
            "mask": masker(bridge),
            "notice": notice_of(request),
        }
        return console.page(request, "event.html", context)

    @app.get("/dead", response_class=HTMLResponse)
    async def dead_letters(
        request: Request, _: SessionDep, console: ConsoleDep, bridge: BridgeDep
    ) -> Response:
        wanted = EventFilter.of({"cursor": request.query_params.get("cursor", "")})
        page = await bridge.history.list_events(
            state=EventState.DEAD, before=wanted.before, limit=PAGE
        )
        rows = [(e, [d for d in found if d.state is DeliveryState.DEAD]) for e, found in page]
        context = {
            "nav": "dead",
            "rows": rows,
            "older": urlencode({"cursor": page_cursor(page[-1][0])}) if len(page) == PAGE else None,
            "mask": masker(bridge),
            "notice": notice_of(request),
        }
        return console.page(request, "dead.html", context)

    @app.post("/replay", response_class=HTMLResponse)
    async def replay(
        request: Request, form: FormDep, console: ConsoleDep, bridge: BridgeDep
    ) -> Response:
        """Replay the deliveries chosen (``one``, or every ``delivery`` ticked). A new run
        is asked for with ``mode=new`` and done only once ``confirmed``: the page between
        says what it means."""
        base = request.scope.get("root_path", "")
        back = first(form, "back") or ""
        if not back.startswith(f"{base}/") or "//" in back:  # never a redirect elsewhere
            back = f"{base}/dead"
        chosen = [first(form, "one")] if first(form, "one") else form.get("delivery", [])
        ids = list(dict.fromkeys(i[:64] for i in chosen if i))[:PAGE]
        new_run = first(form, "mode") == "new"
        if not ids:
            return RedirectResponse(with_notice(back, "nothing was selected"), 303)
        if new_run and first(form, "confirmed") != "yes":
            found = [await bridge.history.get_delivery(i) for i in ids]
            context = {
                "nav": "dead",
                "deliveries": [d for d in found if d is not None],
                "back": back,
            }
            return console.page(request, "confirm.html", context)
        done, skipped = await replay_all(bridge, ids, new_run=new_run)
        bridge.dispatcher.wake()
        kind = "as new runs" if new_run else "with their idempotency keys"
        message = f"{done} replayed {kind}: the service sends them now"
        if skipped:
            message += f"; {skipped} skipped (pending already, or gone)"
        return RedirectResponse(with_notice(back, message), 303)


async def replay_all(bridge: Bridge, ids: list[str], *, new_run: bool) -> tuple[int, int]:
    """Replay each delivery as the admin API does; count those that could not be (still
    pending, replayed meanwhile, or gone)."""
    done = skipped = 0
    for delivery_id in ids:
        try:
            await bridge.history.replay(delivery_id, new_run=new_run)
            done += 1
        except (DeliveryNotFound, DeliveryStillPending):
            skipped += 1
    return done, skipped


def masker(bridge: Bridge) -> Masker:
    return Masker(bridge.settings, list(bridge.connections.values()))


def with_notice(path: str, message: str) -> str:
    separator = "&" if "?" in path else "?"
    return f"{path}{separator}{urlencode({'notice': message})}"


def notice_of(request: Request) -> str | None:
    notice = request.query_params.get("notice")
    return notice[:300] if notice else None

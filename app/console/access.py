"""Who gets into the console: the signed-in session every page needs, and the checks
every form that changes something passes (same origin, the session's CSRF token), as
FastAPI dependencies; and what the console keeps for its lifetime."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app import __version__
from app.console.session import COOKIE, Session, SessionSigner, same_origin
from app.errors import PayloadTooLarge, RequestTimeout
from app.server.body import read_capped_body
from app.server.forwarded import ip_of
from app.server.limits import RateLimiter

SESSION_KEY = "console.session"
MAX_FORM_BYTES = 65536
UNKNOWN_CLIENT = "-"


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
    """What the console keeps for its lifetime: the session signer, the templates, the
    wrong-token throttle (keyed by :func:`client_of`) and how long a form's body may
    take to arrive (seconds)."""

    signer: SessionSigner
    templates: Jinja2Templates
    failures: RateLimiter
    body_timeout: float

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


def client_of(request: Request) -> str:
    """Who is signing in, for the wrong-token throttle: the client's address (behind a
    trusted proxy, the one its ``X-Forwarded-For`` names: app.server.forwarded). An IPv4
    client reached over IPv6 (``::ffff:a.b.c.d``) counts by its IPv4 address; an IPv6
    client by its /64, the block one host is usually given, so a guesser cannot take a
    fresh allowance from each address of its own network. A client that is no address
    at all (never so over TCP) shares one allowance with every other such client."""
    address = ip_of(request.client.host) if request.client else None
    if address is None:
        return UNKNOWN_CLIENT
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


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


async def read_form(request: Request, console: Console) -> dict[str, list[str]]:
    """A url-encoded form body (all a console form sends), read as the webhook's is:
    never more than MAX_FORM_BYTES held (sign-in needs no session, so anyone can send
    one), and within BRIDGE_BODY_TIMEOUT."""
    try:
        body = await read_capped_body(request, MAX_FORM_BYTES, console.body_timeout, "the form")
    except (PayloadTooLarge, RequestTimeout) as exc:
        raise Refused(exc.status_code, exc.message) from None
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
    form = await read_form(request, console)
    if not console.signer.csrf_valid(session, first(form, "csrf")):
        raise Refused(403, "the form's CSRF token is missing or wrong: reload the page")
    return form


FormDep = Annotated[dict[str, list[str]], Depends(posted)]


def first(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None

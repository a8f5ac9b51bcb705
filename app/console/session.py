"""The console's sign-in: a signed, expiring session cookie, the CSRF token derived from
it, and the same-origin check every state-changing form passes.

Nothing is stored server-side. The cookie holds an expiry and a random session id,
signed with HMAC-SHA256 under a key derived from ``BRIDGE_ADMIN_TOKEN``: rotating the
token signs every browser out, and any replica can verify any cookie. The CSRF token is
an HMAC of the session id under the same key, so it needs no storage either and changes
with every sign-in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import SecretStr
from starlette.requests import Request

COOKIE = "bridge_console"
# Domain separation: the admin token also opens the admin API; these keys sign nothing else.
_SESSION_CONTEXT = b"erathos-prefect-bridge console session v1"
_CSRF_CONTEXT = b"csrf:"
# A browser POST that says it comes from another site (or a sibling one) is refused even
# without an Origin header; "same-origin" and "none" (typed, bookmarked) pass.
_FOREIGN_FETCH_SITES = frozenset({"cross-site", "same-site"})


@dataclass(frozen=True)
class Session:
    """A signed-in browser: a random id and the epoch second the sign-in ends."""

    id: str
    expires_at: float


class SessionSigner:
    """Issues and verifies session cookies and their CSRF tokens."""

    def __init__(self, admin_token: SecretStr, lifetime: float) -> None:
        self.lifetime = lifetime
        self._key = hmac.new(
            admin_token.get_secret_value().encode(), _SESSION_CONTEXT, hashlib.sha256
        ).digest()

    def issue(self, now: float | None = None) -> tuple[Session, str]:
        """A new session and the cookie value that carries it."""
        session = Session(
            secrets.token_hex(16), int((time.time() if now is None else now) + self.lifetime)
        )
        body = f"{int(session.expires_at)}.{session.id}"
        return session, f"{body}.{self._sign(body.encode())}"

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie carries, or None: absent, malformed, forged (signed under
        another key, such as a rotated token's) or expired."""
        if not cookie or cookie.count(".") != 2:
            return None
        body, _, signature = cookie.rpartition(".")
        # Bytes: compare_digest refuses str with non-ASCII characters (a TypeError, so a
        # 500 on every page), and a cookie is whatever the browser was given.
        expected = self._sign(body.encode("utf-8", "replace"))
        if not hmac.compare_digest(signature.encode("utf-8", "replace"), expected.encode()):
            return None
        expires, _, session_id = body.partition(".")
        if not expires.isdigit() or int(expires) <= (time.time() if now is None else now):
            return None
        return Session(session_id, float(expires))

    def csrf_token(self, session: Session) -> str:
        """The token every state-changing form of this session carries."""
        return self._sign(_CSRF_CONTEXT + session.id.encode())

    def csrf_valid(self, session: Session, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.csrf_token(session).encode()
        )

    def _sign(self, message: bytes) -> str:
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def same_origin(request: Request) -> bool:
    """Whether a POST comes from a page of this service.

    Its ``Origin`` must name the host the request was sent to (the scheme is not
    compared: behind a TLS-terminating proxy the service sees http). Under the console's
    ``Referrer-Policy: no-referrer`` a browser sends ``Origin: null`` with its own forms,
    so then ``Sec-Fetch-Site`` (which no page can set) must say ``same-origin``. Without
    an Origin, ``Sec-Fetch-Site`` must not name another site; clients that send neither
    (curl) still need the CSRF token.
    """
    origin = request.headers.get("origin")
    fetch_site = request.headers.get("sec-fetch-site")
    if origin == "null":
        return fetch_site == "same-origin"
    if origin is not None:
        host = request.headers.get("host")
        return host is not None and urlsplit(origin).netloc == host
    return fetch_site not in _FOREIGN_FETCH_SITES

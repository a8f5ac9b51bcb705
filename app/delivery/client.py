"""The Prefect client: one ``httpx.AsyncClient`` per Prefect connection, and the
classification of every answer as delivered, transient (retry) or permanent (stop).

Permanent: 400, 401, 403, 404, 409, 411, 413, 422 and any other 4xx or redirect.
Transient: 408, 429, every 5xx, connection errors and timeouts. ``Retry-After``
is read in both of its forms (seconds and HTTP date).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from pydantic import SecretStr

from app import __version__
from app.masking import Masker
from app.routing.router import PrefectRequest

USER_AGENT = f"erathos-prefect-bridge/{__version__}"
EXCERPT_CHARS = 1000
_CLOUD_API = re.compile(r"^/api/accounts/([^/]+)/workspaces/([^/]+)")
_TRANSIENT_STATUSES = {408, 429}


class Outcome(StrEnum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class AttemptResult:
    """What one request to Prefect came to. Carries no secret."""

    outcome: Outcome
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    flow_run_id: str | None = None
    created: bool = False  # 201: a new run; 200: Prefect's idempotency returned an existing one
    retry_after: float | None = None  # seconds, from the Retry-After header
    response_excerpt: str | None = None
    timed_out: bool = False
    response_body: str | None = field(default=None, repr=False)  # in memory only, never stored


@dataclass(frozen=True)
class Health:
    reachable: bool
    authorized: bool | None  # None when it could not be told (server unreachable)
    detail: str


@dataclass(frozen=True)
class Fetched:
    """What a read (or a create) came to: Prefect's status and JSON object, or why there
    is none."""

    status_code: int | None  # None: no answer (connection error, timeout)
    body: dict[str, Any] | None = field(default=None, repr=False)  # a 2xx answer's object
    error: str | None = None  # why there is no body; carries no secret


def classify_status(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in _TRANSIENT_STATUSES or status >= 500:
        return Outcome.TRANSIENT
    return Outcome.PERMANENT


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait, from ``Retry-After: 120`` or ``Retry-After: <HTTP date>``."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class PrefectConnection:
    """A Prefect API (Cloud workspace or self-hosted server), how to authenticate to it,
    and the one HTTP client that talks to it. Whoever makes it closes it (``aclose``):
    the service's lifespan, or a test's ``async with``."""

    def __init__(
        self,
        name: str,
        api_url: str,
        *,
        api_version: str,
        api_key: SecretStr | None = None,
        auth_string: SecretStr | None = None,
        timeout: float = 10.0,
        ui_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        masker: Masker | None = None,
    ) -> None:
        self.name = name
        self.api_url = api_url.rstrip("/")
        self.headers = {"User-Agent": USER_AGENT, "x-prefect-api-version": api_version}
        self.auth_scheme: str | None = None
        if api_key is not None:
            self.auth_scheme = "Bearer"
            self.headers["Authorization"] = f"Bearer {api_key.get_secret_value()}"
        elif auth_string is not None:
            self.auth_scheme = "Basic"
            encoded = base64.b64encode(auth_string.get_secret_value().encode()).decode()
            self.headers["Authorization"] = f"Basic {encoded}"
        # Masked wherever Prefect's answer is kept, before it is cut short: the service's
        # secrets (by default this connection's credentials) in every form they travel
        # in (a proxy or WAF may echo the request's headers back).
        own = [s.get_secret_value() for s in (api_key, auth_string) if s is not None]
        self._masker = masker if masker is not None else Masker(own)
        # Targets named by name, resolved to their ids once (name path -> id).
        self._deployments: dict[str, str] = {}
        self._flows: dict[str, str] = {}
        self._total_timeout = timeout
        self._client = httpx.AsyncClient(
            base_url=f"{self.api_url}/",
            headers=self.headers,
            # Each phase (connect, write, read, pool) gets the whole budget, and so does
            # the request as a whole (see _request): BRIDGE_PREFECT_TIMEOUT is the most
            # one request may take.
            timeout=httpx.Timeout(timeout),
            # A redirect is answered, never followed: it is a permanent error (a wrong
            # URL), and following it would carry the credentials elsewhere.
            follow_redirects=False,
            # The gate bounds requests in flight; no second queue inside the client,
            # where waiting would eat into the request's timeout.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            transport=transport,
        )
        self._ui_runs = _ui_runs(ui_url or self.api_url)  # once, not per delivery

    async def __aenter__(self) -> PrefectConnection:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(self, path: str) -> httpx.Response:
        """GET a path under the API URL; raises ``httpx.HTTPError`` and ``TimeoutError``."""
        return await self._request("GET", path)

    async def post(self, path: str, body: Any) -> httpx.Response:
        """POST JSON to a path under the API URL; raises as :meth:`get` does."""
        return await self._request("POST", path, body)

    async def _request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        async with asyncio.timeout(self._total_timeout):
            return await self._client.request(method, path, json=body)

    async def create_flow_run(self, request: PrefectRequest) -> AttemptResult:
        """POST the request; never raises for anything Prefect or the network does. A 2xx
        without a flow run id in the answer is a permanent error."""
        return await self._post(request, answers_flow_run=True)

    async def emit_events(self, request: PrefectRequest) -> AttemptResult:
        """POST events (``events``, a list); delivered on a 2xx (Prefect answers 204,
        empty). Never raises for anything Prefect or the network does."""
        return await self._post(request, answers_flow_run=False)

    async def _post(self, request: PrefectRequest, *, answers_flow_run: bool) -> AttemptResult:
        started = time.perf_counter()
        try:
            response = await self._request("POST", request.path, request.body)
        except (TimeoutError, httpx.TimeoutException) as exc:
            return replace(
                self._failed(started, f"timed out ({type(exc).__name__})"), timed_out=True
            )
        except httpx.HTTPError as exc:
            return self._failed(started, f"{type(exc).__name__}: {exc}")
        duration_ms = (time.perf_counter() - started) * 1000
        outcome = classify_status(response.status_code)
        text = self._masker.mask(response.text)
        excerpt = text[:EXCERPT_CHARS]
        if outcome is Outcome.DELIVERED and not answers_flow_run:
            return AttemptResult(
                outcome, duration_ms, response.status_code, response_excerpt=excerpt or None
            )
        if outcome is Outcome.DELIVERED:
            run_id = _json_field(response, "id")
            if run_id is None:
                return AttemptResult(
                    Outcome.PERMANENT,
                    duration_ms,
                    response.status_code,
                    "Prefect answered without a flow run id",
                    response_excerpt=excerpt,
                )
            return AttemptResult(
                outcome,
                duration_ms,
                response.status_code,
                flow_run_id=str(run_id),
                created=response.status_code == 201,
                response_excerpt=excerpt,
                response_body=text,
            )
        return AttemptResult(
            outcome,
            duration_ms,
            response.status_code,
            error=f"HTTP {response.status_code}: {self._error_message(response)}",
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            response_excerpt=excerpt,
            response_body=text,
        )

    async def resolve_deployment(self, name_path: str) -> tuple[str | None, AttemptResult | None]:
        """A deployment's id from ``deployments/name/<flow>/<deployment>`` (cached), or the
        failed lookup as an attempt result (404 is permanent: the name is wrong)."""
        what = f"looking up {name_path}"
        return await self._resolve(self._deployments, name_path, what, "GET", name_path)

    async def find_flow(self, name: str) -> tuple[str | None, AttemptResult | None]:
        """A flow's id by its name (cached with :meth:`resolve_flow`'s), by a read:
        nothing is created (404 is permanent: Prefect has no flow by that name)."""
        path = f"flows/name/{quote(name, safe='')}"
        return await self._resolve(self._flows, name, f"looking up {path}", "GET", path)

    async def resolve_flow(self, name: str) -> tuple[str | None, AttemptResult | None]:
        """A flow's id by its name (cached), the flow created if Prefect has none by that
        name yet (``POST flows/`` answers the existing flow for a name it knows), or the
        failed request as an attempt result."""
        what = f"finding or creating flow {name!r}"
        return await self._resolve(self._flows, name, what, "POST", "flows/", {"name": name})

    async def _resolve(
        self, cache: dict[str, str], key: str, what: str, method: str, path: str, body: Any = None
    ) -> tuple[str | None, AttemptResult | None]:
        """The id ``method path`` answers (cached under ``key``), or the failure."""
        cached = cache.get(key)
        if cached is not None:
            return cached, None
        started = time.perf_counter()
        try:
            response = await self._request(method, path, body)
        except (TimeoutError, httpx.TimeoutException) as exc:
            return None, replace(
                self._failed(started, f"{what}: timed out ({type(exc).__name__})"),
                timed_out=True,
            )
        except httpx.HTTPError as exc:
            return None, self._failed(started, f"{what}: {type(exc).__name__}: {exc}")
        found = _json_field(response, "id") if response.is_success else None
        if found is None:
            duration_ms = (time.perf_counter() - started) * 1000
            outcome = classify_status(response.status_code)
            if outcome is Outcome.DELIVERED:
                outcome = Outcome.PERMANENT
            message = self._error_message(response)
            return None, AttemptResult(
                outcome,
                duration_ms,
                response.status_code,
                error=f"{what}: HTTP {response.status_code}: {message}",
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        cache[key] = str(found)
        return str(found), None

    async def fetch(self, path: str, *, post: Any = None) -> Fetched:
        """GET one object (a flow, a deployment), or POST ``post`` (to make one, an
        automation, or to ask as the filters do); never raises."""
        try:
            if post is None:
                response = await self.get(path)
            else:
                response = await self._request("POST", path, post)
        except (TimeoutError, httpx.HTTPError) as exc:
            return Fetched(None, error=self._masker.mask(f"{type(exc).__name__}: {exc}"))
        try:
            body = response.json() if response.is_success else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            message = self._error_message(response)
            return Fetched(response.status_code, error=f"HTTP {response.status_code}: {message}")
        return Fetched(response.status_code, body)

    async def health(self) -> Health:
        """Whether the API answers, and whether it accepts our credentials."""
        try:
            response = await self.get("health")
        except (TimeoutError, httpx.HTTPError) as exc:
            return Health(
                False, None, f"unreachable: {type(exc).__name__}: {self._masker.mask(str(exc))}"
            )
        if response.status_code >= 500:
            return Health(False, None, f"health answered HTTP {response.status_code}")
        if response.status_code == 404:
            # Something answers there, but not a Prefect API: most often a URL without /api.
            where = f"HTTP 404 at {self.api_url}/health"
            if not urlsplit(self.api_url).path.endswith("/api"):
                return Health(True, None, f"{where}: did you mean {self.api_url}/api?")
            return Health(True, None, f"{where}: is this a Prefect API URL?")
        try:
            # An authenticated read: health itself needs no credentials.
            probe = await self._request("POST", "flows/filter", {"limit": 1})
        except (TimeoutError, httpx.HTTPError) as exc:
            return Health(True, None, f"{type(exc).__name__}: {self._masker.mask(str(exc))}")
        if probe.status_code in (401, 403):
            return Health(True, False, f"credentials refused (HTTP {probe.status_code})")
        if not probe.is_success:  # a redirect too: never followed, every delivery fails
            message = self._error_message(probe)
            return Health(True, None, f"HTTP {probe.status_code}: {message}")
        return Health(True, True, "ok")

    def flow_run_url(self, flow_run_id: str) -> str:
        """The run's page in the Prefect UI."""
        return f"{self._ui_runs}/{flow_run_id}"

    def _failed(self, started: float, error: str) -> AttemptResult:
        duration_ms = (time.perf_counter() - started) * 1000
        return AttemptResult(Outcome.TRANSIENT, duration_ms, error=self._masker.mask(error))

    def _error_message(self, response: httpx.Response) -> str:
        """Prefect's own words (:func:`error_message`), masked before they are cut short."""
        return error_message(response, self._masker)


def _ui_runs(api_url: str) -> str:
    """Where the Prefect UI of an API (or the UI's own address) shows flow runs (a run's
    id follows)."""
    parts = urlsplit(api_url)
    if parts.hostname == "api.prefect.cloud" and (match := _CLOUD_API.match(parts.path)):
        account, workspace = match.groups()
        return f"https://app.prefect.cloud/account/{account}/workspace/{workspace}/runs/flow-run"
    path = parts.path.removesuffix("/api")
    return f"{parts.scheme}://{parts.netloc}{path}/runs/flow-run"


def _json_field(response: httpx.Response, name: str) -> Any:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body.get(name) if isinstance(body, dict) else None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def error_message(response: httpx.Response, masker: Masker) -> str:
    """Prefect's own words: ``detail``, or ``exception_message`` with its detail; masked
    whole, then cut short (a secret cut in two would no longer be found)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return masker.cut(response.text, 300) or _phrase(response.status_code)
    if isinstance(body, dict):
        if "detail" in body:
            return masker.cut(str(body["detail"]), 500)
        if "exception_message" in body:
            detail = body.get("exception_detail")
            suffix = f": {masker.cut(json.dumps(detail), 400)}" if detail else ""
            return f"{masker.mask(str(body['exception_message']))}{suffix}"
    return masker.cut(json.dumps(body), 500)

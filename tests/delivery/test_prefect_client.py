"""The Prefect client against answers only a fake can give: how each answer is classified,
Retry-After, redirects, timeouts, connection errors, and what every request carries."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from email.utils import formatdate

import httpx
import pytest
from pydantic import SecretStr

from app import __version__
from app.config import PREFECT_API_VERSION
from app.delivery.client import Outcome, PrefectConnection, classify_status, parse_retry_after
from app.routing.router import PrefectRequest
from tests.support.stub import REFUSED_URL, STUB_API_URL, mock_connection, recording

pytestmark = pytest.mark.anyio

CREATE = PrefectRequest("deployments/d-1/create_flow_run", {"name": "erathos_run_orders"})


def created(request: httpx.Request) -> httpx.Response:
    return httpx.Response(201, json={"id": "run-1"})


# -- classification ---------------------------------------------------------------------

STATUS_TABLE: list[tuple[int, Outcome]] = [
    (200, Outcome.DELIVERED),
    (201, Outcome.DELIVERED),
    *((s, Outcome.PERMANENT) for s in (400, 401, 403, 404, 409, 411, 413, 422, 405, 307)),
    *((s, Outcome.TRANSIENT) for s in (408, 429, 500, 502, 503, 504)),
]


@pytest.mark.parametrize(("status", "outcome"), STATUS_TABLE)
def test_a_status_is_delivered_permanent_or_transient(status: int, outcome: Outcome) -> None:
    assert classify_status(status) is outcome


@pytest.mark.parametrize(
    ("status", "outcome"), [(s, o) for s, o in STATUS_TABLE if o is not Outcome.DELIVERED]
)
async def test_a_failed_answer_is_classified_by_its_status_with_prefects_own_words(
    status: int, outcome: Outcome
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"detail": "Prefect says no"})

    async with mock_connection(answer) as connection:
        result = await connection.create_flow_run(CREATE)

    assert (result.outcome, result.status_code, result.flow_run_id) == (outcome, status, None)
    assert result.error == f"HTTP {status}: Prefect says no"
    assert not result.timed_out


@pytest.mark.parametrize(("status", "created_run"), [(201, True), (200, False)])
async def test_a_2xx_with_an_id_is_delivered_and_only_201_is_a_new_run(
    status: int, created_run: bool
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"id": "run-1", "name": "erathos_run_orders"})

    async with mock_connection(answer) as connection:
        result = await connection.create_flow_run(CREATE)

    assert (result.outcome, result.status_code, result.flow_run_id, result.created) == (
        Outcome.DELIVERED,
        status,
        "run-1",
        created_run,
    )
    assert result.error is None


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(201, json={}),
        httpx.Response(201, json={"id": None}),
        httpx.Response(201, json=[{"id": "run-1"}]),
        httpx.Response(200, text="ok"),
        httpx.Response(201),
    ],
    ids=["no id", "null id", "a list", "not json", "empty"],
)
async def test_a_2xx_without_a_flow_run_id_is_a_permanent_error(answer: httpx.Response) -> None:
    async with mock_connection(lambda request: answer) as connection:
        result = await connection.create_flow_run(CREATE)

    assert (result.outcome, result.status_code, result.flow_run_id) == (
        Outcome.PERMANENT,
        answer.status_code,
        None,
    )
    assert result.error == "Prefect answered without a flow run id"


# -- Retry-After ------------------------------------------------------------------------

NOW = datetime(2026, 11, 28, 6, 15, tzinfo=UTC)


def http_date(seconds_from_now: float, now: datetime = NOW) -> str:
    return formatdate(now.timestamp() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        (http_date(30), 30.0),
        (http_date(-30), 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_retry_after_is_read_as_seconds_or_as_an_http_date(value: str, seconds: float) -> None:
    assert parse_retry_after(value, now=NOW) == pytest.approx(seconds, abs=1.0)


@pytest.mark.parametrize("value", ["soon", "-5", "1.5", "Wed, 99 Foo", "", "   ", None])
def test_an_unreadable_retry_after_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


@pytest.mark.parametrize("value", ["\u00b2", "\u00b9\u00b2\u00b3"])
def test_superscript_digits_in_retry_after_are_unreadable_not_an_error(value: str) -> None:
    # "²".isdigit() is True, but float("²") raises: a header the client decodes from
    # latin-1 or UTF-8 must not make the parser raise.
    assert parse_retry_after(value, now=NOW) is None


@pytest.mark.parametrize("status", [429, 503])
async def test_a_busy_answer_carries_its_retry_after_in_seconds(status: int) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"Retry-After": "30"}, json={"detail": "busy"})

    async with mock_connection(answer) as connection:
        result = await connection.create_flow_run(CREATE)

    assert (result.outcome, result.status_code, result.retry_after) == (
        Outcome.TRANSIENT,
        status,
        30.0,
    )


async def test_a_retry_after_http_date_is_read_as_the_seconds_until_then() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        later = http_date(120, now=datetime.now(UTC))
        return httpx.Response(429, headers={"Retry-After": later})

    async with mock_connection(answer) as connection:
        result = await connection.create_flow_run(CREATE)

    assert result.outcome is Outcome.TRANSIENT
    assert result.retry_after == pytest.approx(120.0, abs=2.0)


@pytest.mark.parametrize(
    "raw", [b"\xc2\xb2", b"\xb2", b"\xff\xfe12"], ids=["utf-8 superscript", "latin-1", "bytes"]
)
async def test_a_garbled_retry_after_still_gives_a_transient_result(raw: bytes) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers=[(b"Retry-After", raw)])

    async with mock_connection(answer) as connection:
        result = await connection.create_flow_run(CREATE)

    assert (result.outcome, result.status_code, result.retry_after) == (
        Outcome.TRANSIENT,
        503,
        None,
    )


# -- redirects --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize(
    "location",
    ["/elsewhere/create", "https://attacker.example/steal"],
    ids=["same host", "another host"],
)
async def test_a_redirect_is_a_permanent_error_and_never_followed(
    status: int, location: str
) -> None:
    seen, handler = recording(
        lambda request: (
            httpx.Response(201, json={"id": "run-1"})
            if request.url.path != "/api/deployments/d-1/create_flow_run"
            else httpx.Response(status, headers={"Location": location})
        )
    )

    async with mock_connection(handler, api_key=SecretStr("pnu_key_1234")) as connection:
        result = await connection.create_flow_run(CREATE)

    assert (result.outcome, result.status_code, result.flow_run_id) == (
        Outcome.PERMANENT,
        status,
        None,
    )
    # One request, to Prefect: the credentials never went to the redirect's target.
    assert [str(request.url) for request in seen] == [
        f"{STUB_API_URL}/deployments/d-1/create_flow_run"
    ]


async def test_an_api_that_redirects_is_reported_unusable_not_authorized() -> None:
    # An http:// URL in front of an https-only Prefect: health answers, every request
    # that needs credentials is redirected, and no delivery would ever succeed.
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/health":
            return httpx.Response(200, json=True)
        return httpx.Response(308, headers={"Location": "https://prefect.test/api/x"})

    async with mock_connection(handler) as connection:
        health = await connection.health()

    assert (health.reachable, health.authorized) == (True, None)
    assert health.detail.startswith("HTTP 308")


# -- what every request carries ---------------------------------------------------------


async def test_a_request_carries_the_user_agent_the_api_version_and_the_json_body() -> None:
    seen, handler = recording(created)

    async with mock_connection(handler) as connection:
        await connection.create_flow_run(CREATE)

    [request] = seen
    assert (request.method, str(request.url)) == (
        "POST",
        f"{STUB_API_URL}/deployments/d-1/create_flow_run",
    )
    assert request.headers["user-agent"] == f"erathos-prefect-bridge/{__version__}"
    assert request.headers["x-prefect-api-version"] == PREFECT_API_VERSION
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == CREATE.body
    assert "authorization" not in request.headers


async def test_an_auth_string_is_sent_as_basic_credentials() -> None:
    seen, handler = recording(created)

    async with mock_connection(handler, auth_string=SecretStr("admin:pass:word")) as connection:
        await connection.create_flow_run(CREATE)

    [request] = seen
    scheme, _, credentials = request.headers["authorization"].partition(" ")
    assert (scheme, base64.b64decode(credentials)) == ("Basic", b"admin:pass:word")


async def test_a_secret_prefect_echoes_back_never_reaches_the_result() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"detail": f"bad key {request.headers['authorization']}"})

    async with mock_connection(echo, api_key=SecretStr("pnu_secret_key")) as connection:
        result = await connection.create_flow_run(CREATE)

    assert result.error == "HTTP 403: bad key Bearer ********"
    assert "pnu_secret_key" not in repr(result) + str(result.response_excerpt)


async def test_an_echoed_basic_authorization_header_never_reaches_the_result() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, text=f"refused: {request.headers['authorization']}")

    async with mock_connection(echo, auth_string=SecretStr("admin:pass:word")) as connection:
        result = await connection.create_flow_run(CREATE)

    encoded = base64.b64encode(b"admin:pass:word").decode()
    assert encoded not in f"{result.error} {result.response_excerpt}"


# -- no answer --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exception",
    [httpx.ConnectTimeout, httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout],
)
async def test_a_timeout_is_a_transient_result_marked_timed_out(
    exception: type[httpx.TimeoutException],
) -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise exception("timed out", request=request)

    async with mock_connection(hang) as connection:
        result = await connection.create_flow_run(CREATE)

    assert (result.outcome, result.status_code, result.timed_out, result.flow_run_id) == (
        Outcome.TRANSIENT,
        None,
        True,
        None,
    )
    assert result.error == f"timed out ({exception.__name__})"


async def test_the_whole_request_is_bounded_by_the_timeout() -> None:
    async def trickle(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(60)  # never answers in time, without any phase timing out
        return httpx.Response(201, json={"id": "run-1"})

    async with asyncio.timeout(10), mock_connection(trickle, request_timeout=0.05) as connection:
        result = await connection.create_flow_run(CREATE)

    assert (result.outcome, result.status_code, result.timed_out) == (
        Outcome.TRANSIENT,
        None,
        True,
    )


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError],
)
async def test_a_connection_error_is_transient_and_not_a_timeout(
    error: type[httpx.TransportError],
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error("connection reset", request=request)

    async with mock_connection(fail) as connection:
        result = await connection.create_flow_run(CREATE)

    assert (result.outcome, result.status_code, result.timed_out) == (
        Outcome.TRANSIENT,
        None,
        False,
    )
    assert result.error == f"{error.__name__}: connection reset"


async def test_a_refused_connection_is_transient() -> None:
    async with PrefectConnection(
        "main", REFUSED_URL, api_version=PREFECT_API_VERSION, timeout=5.0
    ) as connection:
        result = await connection.create_flow_run(CREATE)

    assert (result.outcome, result.status_code, result.timed_out) == (
        Outcome.TRANSIENT,
        None,
        False,
    )
    assert result.error is not None
    assert result.error.startswith("ConnectError")

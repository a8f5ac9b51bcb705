"""The console's doors and pages, in process: it exists only with the admin token, opens
only with a session cookie its sign-in form set, refuses forms without the CSRF token or
from another site, and sends its strict headers. The browser tests
(tests/console/test_console_browser.py) walk it as an operator does."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import SecretStr

from app.config import Settings
from app.console.session import COOKIE, SessionSigner
from app.main import create_app
from tests.support.console import SAME_SITE, sign_in
from tests.support.erathos import webhook_body
from tests.support.html import links_of
from tests.support.inprocess import SettingsFactory, open_client
from tests.support.tokens import ADMIN_TOKEN, TOKEN, auth

pytestmark = pytest.mark.anyio

PAGES = ["/ui/", "/ui/events", "/ui/events/0123456789abcdef0123456789abcdef", "/ui/dead"]


@pytest.fixture
def console_settings(make_settings: SettingsFactory) -> Settings:
    # Prefect unreachable and one attempt: every event is dead at once, nothing to wait for
    # (the answer waits for that first attempt, up to make_settings's failure bound).
    return make_settings(admin_token=ADMIN_TOKEN, max_attempts=1)


@pytest.fixture
async def client(console_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with open_client(console_settings) as c:
        yield c


async def test_without_an_admin_token_there_is_no_console(make_settings: SettingsFactory) -> None:
    async with open_client(make_settings()) as client:
        answers = [
            await client.get(path) for path in ("/ui/", "/ui/sign-in", "/ui/static/console.css")
        ]

    assert [a.status_code for a in answers] == [404, 404, 404]


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_sends_a_browser_without_a_session_to_sign_in(
    client: httpx.AsyncClient, path: str
) -> None:
    anonymous = await client.get(path)
    with_bearer = await client.get(path, headers=auth(ADMIN_TOKEN))
    forged = await client.get(path, headers=cookie("4102444800.abc.forged"))

    for answer in (anonymous, with_bearer, forged):
        assert answer.status_code == 303
        assert answer.headers["location"] == "/ui/sign-in"


@pytest.mark.parametrize("value", ["1.2.\u00e9", "4102444800.abc.\u00e9t\u00e9"])
async def test_a_cookie_with_non_ascii_text_is_simply_not_signed_in(
    client: httpx.AsyncClient, value: str
) -> None:
    # Sent as UTF-8 bytes, as a browser would send what a page or an extension set.
    raw = {b"cookie": f"{COOKIE}={value}".encode()}
    pages = [await client.get(path, headers=raw) for path in PAGES]
    form = await client.get("/ui/sign-in", headers=raw)
    signed = await client.post(
        "/ui/sign-in", data={"token": ADMIN_TOKEN}, headers={b"origin": b"http://bridge", **raw}
    )

    assert [page.status_code for page in pages] == [303] * len(PAGES)
    assert form.status_code == 200
    assert signed.status_code == 303
    assert signed.headers["location"] == "/ui/"


async def test_signing_in_sets_a_strict_http_only_expiring_cookie(
    client: httpx.AsyncClient,
) -> None:
    form = await client.get("/ui/sign-in")
    signed = await client.post("/ui/sign-in", data={"token": ADMIN_TOKEN}, headers=SAME_SITE)

    assert form.status_code == 200
    assert 'method="post"' in form.text
    assert signed.status_code == 303
    assert signed.headers["location"] == "/ui/"
    cookie = signed.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/ui", "Max-Age=28800"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain HTTP here; behind HTTPS it is Secure
    assert ADMIN_TOKEN not in cookie
    assert (await client.get("/ui/")).status_code == 200


async def test_the_cookie_is_secure_over_https(console_settings: Settings) -> None:
    async with open_client(console_settings) as client:
        signed = await client.post(
            "https://bridge/ui/sign-in",
            data={"token": ADMIN_TOKEN},
            headers={"Origin": "https://bridge"},
        )

    assert "Secure" in signed.headers["set-cookie"]


async def test_a_wrong_token_is_refused_with_401_and_no_cookie(client: httpx.AsyncClient) -> None:
    wrong = await client.post("/ui/sign-in", data={"token": TOKEN}, headers=SAME_SITE)
    empty = await client.post("/ui/sign-in", data={"token": ""}, headers=SAME_SITE)

    assert (wrong.status_code, empty.status_code) == (401, 401)
    assert "that is not the admin token" in wrong.text
    assert "set-cookie" not in wrong.headers
    assert (await client.get("/ui/")).status_code == 303


async def test_wrong_tokens_past_the_burst_are_refused_without_being_compared(
    client: httpx.AsyncClient,
) -> None:
    answers = [
        (await client.post("/ui/sign-in", data={"token": TOKEN}, headers=SAME_SITE)).status_code
        for _ in range(12)
    ]
    right = await client.post("/ui/sign-in", data={"token": ADMIN_TOKEN}, headers=SAME_SITE)

    assert answers[:10] == [401] * 10  # the burst
    assert answers[-1] == 429
    assert right.status_code == 429  # not even the right one, until the pause is over


class Body:
    """A form body streamed in 1 KiB chunks, counting how many the service read."""

    def __init__(self, chunks: int, *, then_stall: bool = False) -> None:
        self.chunks = chunks
        self.then_stall = then_stall
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.read += 1
            yield b"token=" if self.read == 1 else b"x" * 1024
        if self.then_stall:
            await asyncio.Event().wait()  # never set: the rest never arrives


FORM = {"Content-Type": "application/x-www-form-urlencoded", **SAME_SITE}


async def test_a_sign_in_form_over_the_cap_is_refused_before_it_is_all_read(
    client: httpx.AsyncClient,
) -> None:
    huge = Body(10_000)  # 10 MB, no Content-Length: chunked
    declared = Body(1)

    streamed = await client.post("/ui/sign-in", content=huge, headers=FORM)
    announced = await client.post(
        "/ui/sign-in", content=declared, headers=FORM | {"Content-Length": "200000000"}
    )

    assert huge.read <= 65  # stopped just past 64 KiB, not 10 MB later
    assert streamed.status_code == 413, streamed.text
    assert "the form is larger than 65536 bytes" in streamed.text
    assert announced.status_code == 413
    assert declared.read == 0  # refused on the declared length alone


async def test_a_form_that_stops_arriving_is_cut_off_with_408(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(admin_token=ADMIN_TOKEN, body_timeout="200ms")
    # The outer timeout guards against a hang (the defect itself); nothing asserts a time.
    async with open_client(settings) as client, asyncio.timeout(30):
        stalled = await client.post("/ui/sign-in", content=Body(2, then_stall=True), headers=FORM)

    assert stalled.status_code == 408
    assert "the form did not arrive in time" in stalled.text


async def test_one_clients_wrong_tokens_never_block_anothers_sign_in(
    console_settings: Settings,
) -> None:
    async with LifespanManager(create_app(console_settings)) as manager:

        def client_at(address: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=manager.app, client=(address, 50000))
            return httpx.AsyncClient(transport=transport, base_url="http://bridge")

        async def sign_in_from(address: str, token: str) -> int:
            async with client_at(address) as client:
                answer = await client.post("/ui/sign-in", data={"token": token}, headers=SAME_SITE)
                return answer.status_code

        guesses = [await sign_in_from("203.0.113.7", TOKEN) for _ in range(12)]
        guesser = await sign_in_from("203.0.113.7", ADMIN_TOKEN)
        operator = await sign_in_from("198.51.100.2", ADMIN_TOKEN)
        for _ in range(12):
            await sign_in_from("2001:db8::1", TOKEN)
        same_network = await sign_in_from("2001:db8::2", ADMIN_TOKEN)  # the same /64
        next_network = await sign_in_from("2001:db8:0:1::1", ADMIN_TOKEN)

    assert guesses[-1] == 429
    assert guesser == 429
    assert operator == 303
    assert (same_network, next_network) == (429, 303)


async def test_a_cookie_signed_under_another_admin_token_or_expired_opens_nothing(
    client: httpx.AsyncClient,
) -> None:
    rotated = SessionSigner(SecretStr("the-admin-token-before-rotation"), 3600).issue()[1]
    current = SessionSigner(SecretStr(ADMIN_TOKEN), 3600)
    expired = current.issue(now=0)[1]
    valid = current.issue()[1]

    assert (await client.get("/ui/", headers=cookie(rotated))).status_code == 303
    assert (await client.get("/ui/", headers=cookie(expired))).status_code == 303
    assert (await client.get("/ui/", headers=cookie(valid))).status_code == 200


async def test_posts_without_the_csrf_token_or_from_another_site_are_refused(
    client: httpx.AsyncClient,
) -> None:
    csrf = await sign_in(client)
    event = await dead_event(client)
    delivery_id = event.delivery_id
    replay = {"one": delivery_id, "csrf": csrf}

    missing = await client.post("/ui/replay", data={"one": delivery_id}, headers=SAME_SITE)
    wrong = await client.post("/ui/replay", data=replay | {"csrf": "x" * 43}, headers=SAME_SITE)
    foreign = await client.post("/ui/replay", data=replay, headers={"Origin": "http://evil"})
    opaque = await client.post("/ui/replay", data=replay, headers={"Origin": "null"})
    sandboxed = await client.post(
        "/ui/replay", data=replay, headers={"Origin": "null", "Sec-Fetch-Site": "cross-site"}
    )
    fetch_site = await client.post(
        "/ui/replay", data=replay, headers={"Sec-Fetch-Site": "cross-site"}
    )
    sign_out = await client.post("/ui/sign-out", data={}, headers=SAME_SITE)

    for refused in (missing, wrong, foreign, opaque, sandboxed, fetch_site, sign_out):
        assert refused.status_code == 403, refused.text
    assert "CSRF" in missing.text
    assert "another site" in foreign.text
    assert await delivery_state(client, event.event_id) == "dead"

    # What Chromium sends with the console's own form under Referrer-Policy: no-referrer.
    own_form = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
    done = await client.post("/ui/replay", data=replay, headers=own_form)
    assert done.status_code == 303
    assert "1+replayed" in done.headers["location"]


async def test_replay_as_a_new_run_asks_first_and_says_what_it_means(
    client: httpx.AsyncClient,
) -> None:
    csrf = await sign_in(client)
    event = await dead_event(client)
    delivery_id = event.delivery_id
    ask = {"delivery": delivery_id, "mode": "new", "csrf": csrf, "back": "/ui/dead"}

    confirm = await client.post("/ui/replay", data=ask, headers=SAME_SITE)
    still = await delivery_state(client, event.event_id)
    confirmed = await client.post("/ui/replay", data=ask | {"confirmed": "yes"}, headers=SAME_SITE)
    detail = (await client.get(f"/events/{event.event_id}", headers=auth(ADMIN_TOKEN))).json()

    assert confirm.status_code == 200
    assert "new key" in confirm.text
    assert 'name="confirmed" value="yes"' in confirm.text
    assert still == "dead"
    assert confirmed.status_code == 303
    assert confirmed.headers["location"].startswith("/ui/dead?notice=")
    assert ":replay-" in detail["deliveries"][0]["idempotency_key"]


async def test_replay_selected_takes_every_ticked_delivery_and_counts_truthfully(
    client: httpx.AsyncClient,
) -> None:
    csrf = await sign_in(client)
    dead = [await dead_event(client) for _ in range(3)]
    gone = [f"{n:032x}" for n in range(60)]  # ticked, then pruned: skipped, not dropped
    ticked = [*gone, *(d.delivery_id for d in dead)]
    form = {"delivery": ticked, "csrf": csrf, "back": "/ui/dead"}

    confirm = await client.post("/ui/replay", data=form | {"mode": "new"}, headers=SAME_SITE)
    done = await client.post("/ui/replay", data=form | {"mode": "same"}, headers=SAME_SITE)

    assert "Yes, create 3 new flow runs" in confirm.text
    notice = parse_qs(urlsplit(done.headers["location"]).query)["notice"][0]
    assert notice.startswith("3 replayed with their idempotency keys")
    assert notice.endswith("; 60 skipped (pending already, or gone)")
    assert [await delivery_state(client, d.event_id) for d in dead] == ["pending"] * 3


async def test_replay_refuses_more_deliveries_than_it_takes_naming_the_field(
    client: httpx.AsyncClient,
) -> None:
    csrf = await sign_in(client)
    event = await dead_event(client)
    ticked = [*(f"{n:032x}" for n in range(500)), event.delivery_id]

    answer = await client.post(
        "/ui/replay", data={"delivery": ticked, "csrf": csrf}, headers=SAME_SITE
    )

    assert answer.status_code == 400
    assert "delivery: 501 selected, at most 500 at a time" in answer.text
    assert await delivery_state(client, event.event_id) == "dead"


async def test_replay_never_redirects_off_the_console(client: httpx.AsyncClient) -> None:
    csrf = await sign_in(client)
    for back in ("https://evil.example/", "//evil.example/ui/", "/ui//evil"):
        answer = await client.post(
            "/ui/replay", data={"csrf": csrf, "back": back}, headers=SAME_SITE
        )
        assert answer.headers["location"].startswith("/ui/dead?"), back


async def test_the_pages_show_the_events_and_load_only_the_services_own_files(
    client: httpx.AsyncClient,
) -> None:
    await sign_in(client)
    event = await dead_event(client, table_name="invoices")
    pages = {path: await client.get(path) for path in ("/ui/", "/ui/events", "/ui/dead")}
    pages["event"] = await client.get(f"/ui/events/{event.event_id}")

    for name, page in pages.items():
        assert page.status_code == 200, name
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["content-security-policy"].startswith("default-src 'none';")
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert not re.search(r"<style|style=", page.text), name
        assert "<script>" not in page.text, name  # only <script src=...>, as the CSP wants
        for url in links_of(page.text):
            assert url.startswith(("/ui/", "data:")), (name, url)
    assert "invoices" in pages["/ui/events"].text
    assert event.execution_id in pages["event"].text
    assert "raw_shop" in pages["event"].text  # a field as Erathos sent it
    assert "on connection default" in pages["event"].text  # the delivery's target
    assert "All connection attempts failed" in pages["event"].text  # the attempt's error


async def test_the_events_page_filters_as_the_admin_api_does(client: httpx.AsyncClient) -> None:
    await sign_in(client)
    invoices = await dead_event(client, table_name="invoices")
    await dead_event(client, table_name="orders")
    part = invoices.execution_id[9:18].upper()

    by_text = await client.get("/ui/events", params={"q": part})
    by_table = await client.get("/ui/events", params={"table": "orders", "state": "dead"})
    none = await client.get("/ui/events", params={"state": "delivered"})
    bad = await client.get("/ui/events", params={"since": "yesterday", "cursor": "x"})
    api = await client.get("/events", params={"execution_id": part}, headers=auth(ADMIN_TOKEN))

    assert invoices.execution_id in by_text.text
    assert "orders" not in by_text.text.split("<tbody>")[1]
    assert "invoices" not in by_table.text.split("<tbody>")[1]
    assert "No event matches" in none.text
    assert bad.status_code == 400
    assert "since:" in bad.text
    assert "cursor:" in bad.text
    assert [e["id"] for e in api.json()["events"]] == [invoices.event_id]


async def test_the_dead_letters_page_refuses_a_cursor_it_did_not_make(
    client: httpx.AsyncClient,
) -> None:
    await sign_in(client)
    await dead_event(client, table_name="invoices")

    bad = await client.get("/ui/dead", params={"cursor": "garbage"})

    assert bad.status_code == 400
    assert "cursor: not one this page made" in bad.text
    assert "invoices" not in bad.text  # not the first page instead


async def test_the_overview_counts_the_last_day_and_lists_the_connections(
    client: httpx.AsyncClient,
) -> None:
    await sign_in(client)
    for _ in range(3):
        await dead_event(client)
    overview = (await client.get("/ui/")).text

    assert re.search(r"<strong>3</strong> dead", overview)
    assert re.search(r"<strong>0</strong> delivered", overview)
    assert "<svg" in overview
    assert "3 dead" in overview  # the hour's bar's title
    assert 'class="badge c-closed"' in overview or 'class="badge c-open"' in overview


async def test_signing_out_ends_the_session_in_this_browser(client: httpx.AsyncClient) -> None:
    csrf = await sign_in(client)
    out = await client.post("/ui/sign-out", data={"csrf": csrf}, headers=SAME_SITE)

    assert out.status_code == 303
    assert out.headers["location"] == "/ui/sign-in"
    assert (await client.get("/ui/")).status_code == 303


def cookie(value: str) -> dict[str, str]:
    """A session cookie sent as is (the client's own jar holds none in these tests)."""
    return {"Cookie": f"{COOKIE}={value}"}


@dataclass(frozen=True)
class Dead:
    event_id: str
    execution_id: str
    delivery_id: str


async def dead_event(client: httpx.AsyncClient, **metadata: str) -> Dead:
    """A webhook whose one delivery is dead at once (Prefect unreachable, one attempt)."""
    body = webhook_body(**metadata)
    answer = await client.post("/webhooks/erathos", json=body, headers=auth())
    assert answer.json()["status"] == "failed", answer.text
    [delivery] = answer.json()["deliveries"]
    return Dead(answer.json()["event_id"], body["execution_id"], delivery["id"])


async def delivery_state(client: httpx.AsyncClient, event_id: str) -> str:
    detail = await client.get(f"/events/{event_id}", headers=auth(ADMIN_TOKEN))
    state: str = detail.json()["deliveries"][0]["state"]
    return state

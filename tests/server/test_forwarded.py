"""Who a request is from, and where an answer sends it: the console's wrong-token
throttle counts a client by its real address (an IPv4 client reached over IPv6 by its
IPv4 address; a forwarded address only from a trusted proxy, and only a valid one), and
no answer builds a URL from the Host header a client sent."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.main import create_app
from tests.support.console import SAME_SITE
from tests.support.inprocess import SettingsFactory
from tests.support.rawhttp import running_service
from tests.support.tokens import ADMIN_TOKEN, TOKEN

pytestmark = pytest.mark.anyio

BURST = 10  # wrong tokens a client may send before it is throttled
SignIn = Callable[..., Awaitable[int]]


@asynccontextmanager
async def console_at(settings: Settings) -> AsyncIterator[SignIn]:
    """``sign_in(peer, token, forwarded=None)``: the sign-in form posted in process, from
    the connection's ``peer`` address, with an ``X-Forwarded-For`` when given; its status."""
    async with LifespanManager(create_app(settings)) as manager:

        async def sign_in(peer: str, token: str, forwarded: str | None = None) -> int:
            transport = httpx.ASGITransport(app=manager.app, client=(peer, 50000))
            headers = SAME_SITE | ({"X-Forwarded-For": forwarded} if forwarded else {})
            async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
                answer = await client.post("/ui/sign-in", data={"token": token}, headers=headers)
                return answer.status_code

        yield sign_in


@pytest.fixture
def console_settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(admin_token=ADMIN_TOKEN)


async def test_an_ipv4_client_reached_over_ipv6_counts_by_its_ipv4_address(
    console_settings: Settings,
) -> None:
    async with console_at(console_settings) as sign_in:
        guesses = [await sign_in("::ffff:203.0.113.7", TOKEN) for _ in range(BURST + 2)]
        other = await sign_in("::ffff:198.51.100.2", ADMIN_TOKEN)
        same_over_ipv4 = await sign_in("203.0.113.7", ADMIN_TOKEN)

    assert guesses[-1] == 429
    assert other == 303  # another IPv4 client: not the guesser's allowance
    assert same_over_ipv4 == 429  # the guesser itself, however it connects


async def test_from_a_peer_that_is_no_trusted_proxy_a_forwarded_address_is_ignored(
    console_settings: Settings,
) -> None:
    async with console_at(console_settings) as sign_in:
        guesses = [await sign_in("203.0.113.7", TOKEN, f"198.51.100.{n}") for n in range(BURST + 2)]
        right = await sign_in("203.0.113.7", ADMIN_TOKEN, "198.51.100.200")

    assert guesses[-1] == 429
    assert right == 429


async def test_from_a_trusted_proxy_each_forwarded_client_has_its_own_allowance(
    make_settings: SettingsFactory,
) -> None:
    proxy = "10.0.0.5"
    settings = make_settings(admin_token=ADMIN_TOKEN, trusted_proxies="10.0.0.0/24")
    async with console_at(settings) as sign_in:
        guesses = [await sign_in(proxy, TOKEN, "203.0.113.7") for _ in range(BURST + 2)]
        # The guesser behind another proxy of the chain, or written as IPv4-mapped: itself.
        chained = await sign_in(proxy, ADMIN_TOKEN, "203.0.113.7, 10.0.0.9")
        mapped = await sign_in(proxy, ADMIN_TOKEN, "::ffff:203.0.113.7")
        operator = await sign_in(proxy, ADMIN_TOKEN, "198.51.100.2")
        # What the client itself put before the proxy's entry does not count.
        forged_before = await sign_in(proxy, ADMIN_TOKEN, "198.51.100.3, 203.0.113.7")

    assert guesses[-1] == 429
    assert (chained, mapped, forged_before) == (429, 429, 429)
    assert operator == 303


async def test_a_forwarded_value_that_is_no_address_leaves_the_request_to_the_proxy(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(admin_token=ADMIN_TOKEN, trusted_proxies="10.0.0.5")
    async with console_at(settings) as sign_in:
        named = [await sign_in("10.0.0.5", TOKEN, f"host-{n}") for n in range(1, BURST + 3)]
        behind_garbage = await sign_in("10.0.0.5", ADMIN_TOKEN, "198.51.100.2, unknown")
        client_of_another_proxy = await sign_in("10.0.0.6", ADMIN_TOKEN, "host-1")

    assert named[-1] == 429  # every made-up name was the proxy's own request
    assert behind_garbage == 429
    assert client_of_another_proxy == 303  # untrusted: itself, never the header's


async def test_the_forwarded_scheme_is_believed_from_a_trusted_proxy_only(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(admin_token=ADMIN_TOKEN, trusted_proxies="10.0.0.5")
    async with LifespanManager(create_app(settings)) as manager:

        async def cookie_from(peer: str) -> str:
            transport = httpx.ASGITransport(app=manager.app, client=(peer, 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
                answer = await client.post(
                    "/ui/sign-in",
                    data={"token": ADMIN_TOKEN},
                    headers=SAME_SITE | {"X-Forwarded-Proto": "https"},
                )
                assert answer.status_code == 303
                return answer.headers["set-cookie"].lower()

        proxied, direct = await cookie_from("10.0.0.5"), await cookie_from("203.0.113.7")

    assert "; secure" in proxied
    assert "; secure" not in direct


@pytest.mark.slow
@pytest.mark.parametrize(
    "forwarded",
    [lambda n: f"host-{n}", lambda n: f"198.51.100.{n}, 127.0.0.1"],
    ids=["made-up names", "addresses before the local proxy's"],
)
async def test_forged_forwarded_addresses_from_the_local_host_are_throttled(
    tmp_path: Path, forwarded: Callable[[int], str]
) -> None:
    # The attack on a real process: 30 wrong tokens, each naming another client.
    async with running_service(tmp_path) as service:
        origin = {"Origin": service.url}
        async with httpx.AsyncClient(base_url=service.url, headers=origin) as client:
            statuses = [
                (
                    await client.post(
                        "/ui/sign-in",
                        data={"token": TOKEN},
                        headers={"X-Forwarded-For": forwarded(n)},
                    )
                ).status_code
                for n in range(1, 31)
            ]

    assert statuses[:BURST] == [401] * BURST
    assert statuses[-1] == 429
    assert statuses.count(429) >= 15  # a second's allowance refills one; 30 never all pass


@pytest.mark.parametrize("host", ["evil.example", "bridge"])
async def test_the_console_redirect_is_relative_whatever_the_host_header(
    console_settings: Settings, host: str
) -> None:
    async with LifespanManager(create_app(console_settings)) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
            console = await client.get("/ui")
            slash = await client.get("/healthz/")
            console_page_slash = await client.get("/ui/sign-in/")

    assert console.status_code == 307
    assert console.headers["location"] == "/ui/"
    for answer in (slash, console_page_slash):
        assert "location" not in answer.headers, answer.headers
        assert answer.status_code == 404


def test_a_trusted_proxy_list_takes_addresses_and_networks(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(trusted_proxies=" 10.0.0.5, 10.1.0.0/16 ,::1")

    assert [str(network) for network in settings.trusted_proxies] == [
        "10.0.0.5/32",
        "10.1.0.0/16",
        "::1/128",
    ]
    assert make_settings().trusted_proxies == []  # none unless listed

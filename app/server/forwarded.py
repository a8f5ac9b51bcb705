"""Who sent a request: the connection's peer, or, when the peer is a trusted proxy
(``BRIDGE_TRUSTED_PROXIES``), the client its ``X-Forwarded-For`` names, and the scheme
its ``X-Forwarded-Proto`` names.

In place of uvicorn's ``proxy_headers``, which trusts 127.0.0.1 unless told otherwise
and takes any text as the client (``host-1``), so that a client reaching the service
through a proxy that passes its headers on could name itself anything. Here no proxy
is trusted unless listed, and a forwarded client must be an IP address: anything else
leaves the request to the peer that brought it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.config.values import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# The most entries of an X-Forwarded-For read from its right end: each is parsed, and a
# longer chain of trusted proxies than this is no deployment's.
MAX_HOPS = 16
SCHEMES = frozenset({"http", "https"})


def ip_of(text: str) -> IPAddress | None:
    """The address in a peer's or a forwarded host (``1.2.3.4``, ``1.2.3.4:5678``,
    ``2001:db8::1``, ``[2001:db8::1]:5678``), an IPv4-mapped IPv6 address as its IPv4
    address (a dual-stack socket's view of an IPv4 client); None when it is none."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ForwardedClient:
    """ASGI middleware: from a trusted proxy, the request's ``client`` becomes the nearest
    address in ``X-Forwarded-For`` that is not itself a trusted proxy (read from the
    right: each proxy appends the address it was reached from), and its ``scheme`` the
    ``X-Forwarded-Proto`` (http or https). An entry that is not an IP address ends the
    reading: the request is then the peer's own, so a forged value never counts as
    another client. From any other peer, both headers are ignored."""

    def __init__(self, app: ASGIApp, trusted: Iterable[IPNetwork]) -> None:
        self.app = app
        self.trusted = tuple(trusted)

    def _trusts(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in network for network in self.trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.trusted and scope["type"] == "http":
            client = scope.get("client")
            if client and self._trusts(ip_of(client[0])):
                self._forwarded(scope)
        await self.app(scope, receive, send)

    def _forwarded(self, scope: Scope) -> None:
        chain: list[str] = []
        proto = None
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                chain += value.decode("latin-1").split(",")
            elif name == b"x-forwarded-proto":
                proto = value.decode("latin-1").strip().lower()
        if proto in SCHEMES:
            scope["scheme"] = proto
        for entry in reversed(chain[-MAX_HOPS:]):
            address = ip_of(entry)
            if address is None:
                return  # not an address: forged or broken, so the request is the peer's
            if not self._trusts(address):
                scope["client"] = (str(address), 0)
                return

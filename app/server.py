"""The HTTP server's connection limits: how long a request head may take, how large it
may be, and how many connections may be open (``BRIDGE_HEADER_TIMEOUT``,
``BRIDGE_MAX_HEADER_BYTES``, ``BRIDGE_MAX_CONNECTIONS``).

uvicorn's httptools protocol has none of them: it waits for a request's headers for ever,
buffers them without a bound, and accepts every connection (``limit_concurrency`` only
answers 503 once a request's headers are complete; a connection still sending them is
never refused). :func:`limited_http_protocol` adds them to it without a timer per
request: a request costs a clock read and a few attribute updates more.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.settings import Settings

if TYPE_CHECKING:
    from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope

log = structlog.get_logger("erathos_prefect_bridge.http")

LOG_EVERY = 10.0  # seconds: at most one line per kind of refusal, saying how many it covers
# How long a refused connection is still read (and what arrives dropped) after its answer:
# closing a socket with unread bytes resets the connection, and the client loses the answer.
LINGER = 1.0


def _plain(status: str, text: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, written straight to the socket."""
    body = text.encode("ascii")
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode("ascii") + body


TOO_MANY_CONNECTIONS = _plain("503 Service Unavailable", "Too many connections")
HEAD_TOO_LARGE_TEXT = "Request header fields too large"
HEAD_TOO_LARGE = _plain("431 Request Header Fields Too Large", HEAD_TOO_LARGE_TEXT)


@dataclass(frozen=True)
class ConnectionLimits:
    """What every connection is held to; times in seconds."""

    header_timeout: float
    max_header_bytes: int
    max_connections: int

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            header_timeout=settings.header_timeout.total_seconds(),
            max_header_bytes=settings.max_header_bytes,
            max_connections=settings.max_connections,
        )


@dataclass
class _Tally:
    """Refusals of one kind, logged at most every LOG_EVERY seconds: a flood of hostile
    connections must not become a flood of log lines."""

    event: str
    logged_at: float = field(default=-LOG_EVERY)
    unlogged: int = 0

    def count(self, now: float, **fields: Any) -> None:
        self.unlogged += 1
        if now - self.logged_at >= LOG_EVERY:
            log.warning(self.event, connections=self.unlogged, **fields)
            self.logged_at, self.unlogged = now, 0


class _Refusal(asyncio.Protocol):
    """A connection that has had its final answer: whatever it still sends is dropped,
    and it is closed when the client closes, or after LINGER."""

    def __init__(self, transport: asyncio.Transport, lingering: set[_Refusal]) -> None:
        self.lingering = lingering
        lingering.add(self)
        transport.set_protocol(self)
        if transport.can_write_eof():
            transport.write_eof()
        self.timer = asyncio.get_running_loop().call_later(LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> None:
        pass  # returning None: the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()
        self.lingering.discard(self)


async def _head_too_large(
    scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
) -> None:
    """Answers a request whose headers are over the limit in place of the service."""
    body = HEAD_TOO_LARGE_TEXT.encode("ascii")
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 431, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, held to :attr:`limits`.

    A request head (the request line and headers) is awaited from the moment the
    connection opens, or from the first byte of the next request on a kept-alive
    connection, until the parser reports the headers complete. Meanwhile the bytes
    received are counted, and one timer per connection (armed when it opens and re-armed
    only when it fires) closes the connection if the head is not complete in time.
    Between requests, uvicorn's own keep-alive timeout applies.
    """

    limits: ClassVar[ConnectionLimits]
    lingering: ClassVar[set[_Refusal]]  # refused connections not closed yet
    refused: ClassVar[_Tally]
    too_large: ClassVar[_Tally]
    too_slow: ClassVar[_Tally]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # When the awaited head began; None while no head is awaited (a request is being
        # read or answered, or the connection waits for the next one).
        self._head_since: float | None = None
        # Bytes received since the head began: every chunk it touches, whole, so at least
        # its size. The first chunk of a head that began after a request in the same
        # chunk may hold that request's end: it is the slack, not proof of a large head.
        self._head_bytes = 0
        self._head_slack = 0
        self._chunk_size = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_timer_for: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            # Refused before anything is read: the bound holds for connections that never
            # send a byte too (limit_concurrency's does not).
            self.transport = transport
            self.refused.count(self.loop.time(), limit=self.limits.max_connections)
            self._refuse(TOO_MANY_CONNECTIONS)
            return
        super().connection_made(transport)
        self._head_since = self.loop.time()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    # The three methods every request goes through: they call uvicorn's by name, which
    # is measurably cheaper than super() (0.1 to 0.2 us a request).

    def data_received(self, data: bytes) -> None:
        self._chunk_size = len(data)
        if self._head_since is not None:
            self._head_bytes += self._chunk_size
            if self._head_bytes > self.limits.max_header_bytes:
                self._receive_past_header_limit(data)
                return
        HttpToolsProtocol.data_received(self, data)

    def on_message_begin(self) -> None:
        if self._head_since is None:  # the next request on a kept-alive connection
            self._head_since = self.loop.time()
            self._head_bytes = self._head_slack = self._chunk_size
        HttpToolsProtocol.on_message_begin(self)

    def on_headers_complete(self) -> None:
        self._head_since = None
        # The byte count is only an upper bound on the head; past the limit, measure the
        # head itself, so that a large body in the same chunk is not held against it.
        if self._head_bytes > self.limits.max_header_bytes and (
            self._head_size() > self.limits.max_header_bytes
        ):
            self.too_large.count(self.loop.time(), client=self._client_host())
            # uvicorn reads the body and closes after the answer, as for its own 503s;
            # the service's app never sees the request.
            self.app = _head_too_large
        HttpToolsProtocol.on_headers_complete(self)

    def _head_size(self) -> int:
        """The least the head can have taken: "GET <url> HTTP/1.1", "name:value" lines."""
        return len(self.url) + 17 + sum(len(name) + len(value) + 3 for name, value in self.headers)

    def _receive_past_header_limit(self, data: bytes) -> None:
        """The slow path: the bytes counted take the head past the limit. Parse them (the
        head may end in this chunk, and is then measured), then refuse the head if it is
        still unfinished with more than the limit of it received for certain: at most
        the limit and two reads (256 KB each) of it are ever buffered."""
        super().data_received(data)
        if (
            self._head_since is not None
            and self._head_bytes - self._head_slack > self.limits.max_header_bytes
            and not self.transport.is_closing()
        ):
            self.too_large.count(self.loop.time(), client=self._client_host())
            if self.cycle is None or self.cycle.response_complete:
                self._refuse(HEAD_TOO_LARGE)
            else:  # an earlier request is still being answered: closing is all there is
                self.transport.close()

    def _refuse(self, answer: bytes) -> None:
        """Send ``answer`` and hand the connection to a :class:`_Refusal`; past as many
        refused connections lingering as may be open, close it at once."""
        self._cancel_head_timer()
        self._head_since = None
        self.connections.discard(self)
        self.parser = None  # type: ignore[assignment]  # what it buffered goes now
        self.transport.write(answer)
        if len(self.lingering) < self.limits.max_connections:
            _Refusal(self.transport, self.lingering)
        else:
            self.transport.close()

    def _arm_head_timer(self) -> None:
        since = self._head_since
        self._head_timer_for = since
        due = (self.loop.time() if since is None else since) + self.limits.header_timeout
        self._head_timer = self.loop.call_at(due, self._head_timer_fired)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timer_fired(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return  # closed, or handed over to a WebSocket protocol: nothing to watch
        if self._head_since is not None and self._head_since == self._head_timer_for:
            # The head this timer was armed for is still unfinished: its time is up.
            self.too_slow.count(self.loop.time(), client=self._client_host())
            self._head_since = None
            transport.close()
            return
        self._arm_head_timer()  # for the head awaited now, or the next one

    def _client_host(self) -> str | None:
        return self.client[0] if self.client else None


def limited_http_protocol(limits: ConnectionLimits) -> type[LimitedHttpToolsProtocol]:
    """The protocol class to pass as ``uvicorn.run(http=...)``: uvicorn makes one per
    connection from the class alone, so the limits travel as class attributes."""

    class Limited(LimitedHttpToolsProtocol):
        pass

    Limited.limits = limits
    Limited.lingering = set()
    Limited.refused = _Tally("connection refused: BRIDGE_MAX_CONNECTIONS reached")
    Limited.too_large = _Tally("request headers over BRIDGE_MAX_HEADER_BYTES: answered 431")
    Limited.too_slow = _Tally("request headers not complete in BRIDGE_HEADER_TIMEOUT: closed")
    return Limited

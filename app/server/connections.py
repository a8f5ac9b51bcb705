"""The HTTP server's connection limits: how long each phase of a connection may take,
how large a request head may be, and how many connections may be open
(``BRIDGE_HEADER_TIMEOUT``, ``BRIDGE_BODY_TIMEOUT``, ``BRIDGE_KEEPALIVE_TIMEOUT``,
``BRIDGE_MAX_HEADER_BYTES``, ``BRIDGE_MAX_CONNECTIONS``).

uvicorn's httptools protocol has none of them: it waits for a request's headers for ever,
buffers them without a bound, reads a body the app answered without reading for as long
as it trickles in, stops its keep-alive timer when any byte arrives after an answer and
never starts it again, waits for ever for a client to read its answers, and accepts
every connection (``limit_concurrency`` only answers 503 once a request's headers are
complete; a connection still sending them is never refused). :func:`limited_http_protocol`
adds them to it with one timer per connection, re-armed only when it fires or a deadline
comes nearer: a request costs a few clock reads and attribute updates more, and no timer
of its own (uvicorn's keep-alive timer, one per request, is not used).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import Settings
from app.server.refusals import Refusal, Tally

if TYPE_CHECKING:
    from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope

# How long a refused connection is still read (and what arrives dropped) after its answer:
# closing a socket with unread bytes resets the connection, and the client loses the answer.
LINGER = 1.0
# How long past BRIDGE_BODY_TIMEOUT the service may still answer a body that has not
# arrived, before the connection is closed under it: its own 408 is timed from when it
# began to read, a moment after the server's deadline began.
ANSWER_GRACE = 1.0
# A timer may fire this much before its time (libuv counts in milliseconds).
EARLY = 0.002

# The phases of a connection. Each but ANSWERING has a deadline, counted from when it
# began: the service's own work on a request is bounded by its own timeouts.
HEAD: Final = 0  # a request line and headers awaited (from the connection's opening)
BODY: Final = 1  # the headers are in, the body is not (answered or not)
ANSWERING: Final = 2  # the request is in, the service answers it
IDLE: Final = 3  # answered; the next request awaited


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
    body_timeout: float
    keepalive_timeout: float

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            header_timeout=settings.header_timeout.total_seconds(),
            max_header_bytes=settings.max_header_bytes,
            max_connections=settings.max_connections,
            body_timeout=settings.body_timeout.total_seconds(),
            keepalive_timeout=settings.keepalive_timeout.total_seconds(),
        )


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

    A connection is always in one phase (HEAD, BODY, ANSWERING, IDLE), entered at a
    parser event: the head from the connection's opening, or from the first byte of the
    next request; the body from the end of its head to its end, whether the service
    reads it or has answered already; answering until the answer is complete; idle
    from then until the next request's first byte (bytes that begin no request, such as
    blank lines, leave it idle). Each phase but answering must end within its timeout,
    or the connection is closed; and whatever the phase, a client that stops reading
    its answers (the transport paused writing) must resume within BRIDGE_BODY_TIMEOUT.
    One timer per connection watches them: armed for the current deadline, it re-arms
    itself when it fires early (the phase changed since), and is re-armed before that
    only when a new deadline is nearer than it.

    Meanwhile the bytes of an awaited head are counted, and a head over the size limit
    is refused without being buffered.
    """

    limits: ClassVar[ConnectionLimits]
    lingering: ClassVar[set[_Refusal]]  # refused connections not closed yet
    refused: ClassVar[Tally]
    too_large: ClassVar[Tally]
    head_too_slow: ClassVar[Tally]
    body_too_slow: ClassVar[Tally]
    idle: ClassVar[Tally]
    unread: ClassVar[Tally]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: int = HEAD
        self._since = 0.0  # when the phase began (the loop's clock)
        # Bytes received since the head began: every chunk it touches, whole, so at least
        # its size. The first chunk of a head that began after a request in the same
        # chunk may hold that request's end: it is the slack, not proof of a large head.
        self._head_bytes = 0
        self._head_slack = 0
        self._chunk_size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        # While the client reads answers more slowly than they are written (the transport
        # paused writing): when it must have read enough for writing to resume.
        self._write_due: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            # Refused before anything is read: the bound holds for connections that never
            # send a byte too (limit_concurrency's does not).
            self.transport = transport
            self.refused.count(self.loop.time(), limit=self.limits.max_connections)
            self._refuse(TOO_MANY_CONNECTIONS)
            return
        super().connection_made(transport)
        self._since = self.loop.time()
        self._arm(self._since + self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    # The methods every request goes through: they call uvicorn's by name, which is
    # measurably cheaper than super() (0.1 to 0.2 us a request).

    def data_received(self, data: bytes) -> None:
        self._chunk_size = len(data)
        if self._phase == HEAD:
            self._head_bytes += self._chunk_size
            if self._head_bytes > self.limits.max_header_bytes:
                self._receive_past_header_limit(data)
                return
        HttpToolsProtocol.data_received(self, data)

    def on_message_begin(self) -> None:
        if self._phase != HEAD:  # the next request on a kept-alive connection
            self._enter(HEAD, self.limits.header_timeout)
            self._head_bytes = self._head_slack = self._chunk_size
        HttpToolsProtocol.on_message_begin(self)

    def on_headers_complete(self) -> None:
        self._enter(BODY, self.limits.body_timeout)
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

    def on_message_complete(self) -> None:
        cycle = self.cycle  # None only after a WebSocket upgrade's head
        if cycle is not None and cycle.response_complete:  # answered before its body was in
            self._enter(IDLE, self.limits.keepalive_timeout)
        else:
            self._phase = ANSWERING  # no deadline: the service's own timeouts bound it
        HttpToolsProtocol.on_message_complete(self)

    def on_response_complete(self) -> None:
        # uvicorn's, but for its keep-alive timer (a timer per request, which the next
        # byte stops for good): the idle phase is watched by this connection's timer.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            if self._phase != ANSWERING:
                # What is read of the next request was held back while this one was
                # answered: its head's or body's time begins now.
                self._since = self.loop.time()
        elif self._phase == ANSWERING:
            self._enter(IDLE, self.limits.keepalive_timeout)
        elif self._phase == BODY:  # answered before the body was all in
            now, due = self.loop.time(), self._since + self.limits.body_timeout
            if now >= due - EARLY:
                # Answered (its own 408, most likely) once the body's time was up: what
                # is left of the body must not hold the connection.
                self.body_too_slow.count(now, client=self._client_host())
                self._close_now()
            elif self._timer is None or self._timer_due > due:
                self._arm(due)  # it was armed with the grace of a request being answered

    def pause_writing(self) -> None:
        # Rare (the transport holds more than 64 KB of answers): each stall has a deadline,
        # whatever the phase, or a client that never reads holds the connection for ever.
        HttpToolsProtocol.pause_writing(self)
        due = self.loop.time() + self.limits.body_timeout
        self._write_due = due
        if self._timer is None or due < self._timer_due:
            self._arm(due)

    def resume_writing(self) -> None:
        self._write_due = None
        HttpToolsProtocol.resume_writing(self)

    # The phases' deadlines.

    def _enter(self, phase: int, timeout: float) -> None:
        now = self.loop.time()
        self._phase, self._since = phase, now
        if self._timer is None or now + timeout < self._timer_due:
            self._arm(now + timeout)

    def _deadline(self, phase: int) -> float | None:
        """When the current phase's time is up; None while the service answers."""
        if phase == HEAD:
            return self._since + self.limits.header_timeout
        if phase == BODY:
            due = self._since + self.limits.body_timeout
            # While the service holds the request, it may still answer it (408).
            answered = self.cycle is None or self.cycle.response_complete
            return due if answered else due + ANSWER_GRACE
        if phase == IDLE:
            return self._since + self.limits.keepalive_timeout
        return None

    def _arm(self, due: float) -> None:
        self._cancel_timer()
        self._timer_due = due
        self._timer = self.loop.call_at(due, self._timer_fired)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timer_fired(self) -> None:
        self._timer = None
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return  # closed, or handed over to a WebSocket protocol: nothing to watch
        now, phase, write_due = self.loop.time(), self._phase, self._write_due
        if write_due is not None and now >= write_due - EARLY:
            self.unread.count(now, client=self._client_host())
            self._close_now()
            return
        due = self._deadline(phase)
        if write_due is not None:
            due = write_due if due is None else min(due, write_due)
        if due is None:
            return  # armed again when the answer is complete
        if now < due - EARLY:
            self._arm(due)  # the phase changed since this timer was armed
            return
        tally = {HEAD: self.head_too_slow, BODY: self.body_too_slow}.get(phase, self.idle)
        tally.count(now, client=self._client_host())
        self._close_now()

    def _close_now(self) -> None:
        """Close the connection at a deadline. Answers the client has not read are
        dropped: ``close()`` would wait for it to read them, for ever if it never does."""
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()

    # The head's size.

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
            self._phase == HEAD
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
        self._cancel_timer()
        self.connections.discard(self)
        self.parser = None  # type: ignore[assignment]  # what it buffered goes now
        self.transport.write(answer)
        if len(self.lingering) < self.limits.max_connections:
            _Refusal(self.transport, self.lingering)
        else:
            self.transport.close()

    def _client_host(self) -> str | None:
        return self.client[0] if self.client else None


def limited_http_protocol(limits: ConnectionLimits) -> type[LimitedHttpToolsProtocol]:
    """The protocol class to pass as ``uvicorn.run(http=...)``: uvicorn makes one per
    connection from the class alone, so the limits travel as class attributes."""

    class Limited(LimitedHttpToolsProtocol):
        pass

    Limited.limits = limits
    Limited.lingering = set()
    Limited.refused = Tally(Refusal.TOO_MANY, "connection refused: BRIDGE_MAX_CONNECTIONS reached")
    Limited.too_large = Tally(
        Refusal.HEAD_TOO_LARGE, "request headers over BRIDGE_MAX_HEADER_BYTES: answered 431"
    )
    Limited.head_too_slow = Tally(
        Refusal.HEAD_TOO_SLOW, "request headers not complete in BRIDGE_HEADER_TIMEOUT: closed"
    )
    Limited.body_too_slow = Tally(
        Refusal.BODY_TOO_SLOW, "request body not complete in BRIDGE_BODY_TIMEOUT: closed"
    )
    # The usual end of a kept-alive connection: counted, never logged.
    Limited.idle = Tally(Refusal.IDLE, None)
    Limited.unread = Tally(
        Refusal.ANSWER_UNREAD, "answers not read by the client in BRIDGE_BODY_TIMEOUT: closed"
    )
    return Limited

"""Logging: one structlog pipeline for the service's and uvicorn's loggers, JSON objects
(one per line) by default, ``key=value`` text on a terminal; a request id on every line.

The service logs with ``structlog.get_logger`` and keyword fields (the event's
``execution_id``, route, connection, ``flow_run_id``); stdlib records (uvicorn, httpx)
go through the same processors. Secrets never reach a record (settings hold them as
``SecretStr``, errors are redacted at source); as a last guard every configured secret
value is masked in the rendered line.
"""

from __future__ import annotations

import asyncio
import atexit
import io
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from typing import TextIO, cast

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.typing import EventDict, Processor, WrappedLogger

from app.errors import internal_error
from app.ids import new_id
from app.masking import Masker

REQUEST_ID_HEADER = "X-Request-ID"
# Probes and scrapes arrive every few seconds: logged at DEBUG unless they fail.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
NOISY_LIBRARIES = ("httpx", "httpcore", "asyncio")
LEADING_KEYS = ("ts", "level", "logger", "msg", "request_id")
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}

log = structlog.get_logger("erathos_prefect_bridge.logs")


def _record_extras(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """A stdlib record's ``extra=`` fields, as structlog calls pass keywords."""
    record = event_dict.get("_record")
    if record is not None:
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                event_dict.setdefault(key, value)
    return event_dict


def _leading_keys(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """When, how bad, from where and what first; then the fields."""
    ordered: EventDict = {key: event_dict.pop(key) for key in LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def configure_logging(fmt: str = "auto", level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Route structlog and every stdlib logger (uvicorn's too) through one handler on
    stderr: JSON lines, or console text for ``console`` (and ``auto`` on a terminal)."""
    stderr = _stderr()
    use_console = fmt == "console" or (fmt == "auto" and stderr.isatty())
    stamp = (
        structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False)
        if use_console
        else structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts")
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        stamp,
    ]
    renderer: list[Processor]
    if use_console:
        renderer = [structlog.dev.ConsoleRenderer(colors=stderr.isatty(), sort_keys=False)]
    else:
        renderer = [
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("msg"),
            _leading_keys,
            structlog.processors.JSONRenderer(ensure_ascii=False, default=str),
        ]
    masker = Masker(secrets)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _record_extras],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *renderer,
            masker,
        ],
    )
    handler = _StderrHandler(stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # One line per request to Prefect is already logged, with more context, by the dispatcher;
    # the drivers' own debug lines (one per SQLite call) would drown the service's.
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # The service's own lines skip the stdlib machinery (a LogRecord, handler locks, a
    # formatter): the same processors render them straight to stderr, at half the cost.
    structlog.configure(
        processors=[*shared, *renderer, masker],
        logger_factory=_StderrLogger,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        # Not cached: a later configure_logging (the CLI in tests) takes effect everywhere.
        cache_logger_on_first_use=False,
    )


class LostLines:
    """How many log lines the sink refused (stderr closed, a broken pipe): the service
    goes on without its log rather than fail what it was logging."""

    def __init__(self) -> None:
        self.count = 0


lost_lines = LostLines()
# What writing to a sink that is gone raises: BrokenPipeError and the other OSErrors,
# ValueError for a file closed under us.
_SINK_GONE = (OSError, ValueError)


class _NoStderr(io.TextIOBase):
    """The sink of a process started without stderr (``2>&-``: Python's ``sys.stderr`` is
    None): every line written to it is lost, and counted as such."""

    def write(self, text: str) -> int:
        raise OSError(f"stderr is closed: {len(text)} characters lost")


# A text stream as the sinks take one (typing's TextIO is an interface no io class names).
_NO_STDERR = cast(TextIO, _NoStderr())


def _stderr() -> TextIO:
    return sys.stderr if sys.stderr is not None else _NO_STDERR


def hold_standard_streams() -> None:
    """Open the null device on each standard descriptor (0, 1, 2) the process was
    started without (``2>&-``), before anything else is opened.

    Otherwise the next descriptor opened takes that number: libuv aborts the process at
    once when its epoll descriptor is 2, and anything written to "stderr" would land in
    a socket or the store's file. ``sys.stderr`` stays None (Python decided it at
    start-up): what the service logs is lost, and counted (:data:`lost_lines`)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # the lowest free number is fd, unless a lower one was taken
                os.dup2(null, fd)
                os.close(null)


class _StderrLogger(structlog.WriteLogger):
    """One rendered line to the current ``sys.stderr``, with the logger's name (for
    ``add_logger_name``). A line the sink refuses is lost and counted, never raised:
    a ``log.*`` call must not fail a webhook or a delivery.

    On the event loop, the lines of one turn of the loop are written together at the
    start of the next (:class:`_Batch`); elsewhere (the CLI, a thread) at once."""

    def __init__(self, name: str = "") -> None:
        super().__init__(_stderr())
        self.name = name

    def msg(self, message: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _write(self._file, message + "\n", lines=1)
            return
        _batch.add(loop, self._file, message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def _write(sink: TextIO, text: str, lines: int) -> None:
    try:
        sink.write(text)
        sink.flush()
    except _SINK_GONE:
        lost_lines.count += lines


class _Batch:
    """The log lines of one turn of the event loop, written with one ``write`` when the
    loop comes round (``call_soon``), microseconds later and in order.

    Each write to stderr releases the GIL, and on a busy SQLite writer thread the loop
    then waits to take it back: two lines per webhook, written one by one, cost the
    durable accept a measurable share of its CPU (bench/README.md). What a kill -9 can lose is the
    lines of the turn it interrupts; a normal exit writes them (``atexit``)."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._sink: TextIO | None = None
        # A stdlib record from another thread (the SQLite writer's) flushes too: a line
        # added meanwhile must land in a batch whose flush is scheduled.
        self._lock = threading.Lock()

    def add(self, loop: asyncio.AbstractEventLoop, sink: TextIO, line: str) -> None:
        with self._lock:
            if self._lines and sink is not self._sink:
                self._flush()  # stderr was replaced (tests do): the earlier lines go first
            if not self._lines:
                self._sink = sink
                loop.call_soon(self.flush)
            self._lines.append(line)

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        if not self._lines or self._sink is None:
            return
        lines, self._lines = self._lines, []
        _write(self._sink, "\n".join(lines) + "\n", lines=len(lines))


_batch = _Batch()
atexit.register(_batch.flush)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """The stdlib records' handler, as safe as :class:`_StderrLogger`: the base class
    would report a failed write on the same broken stderr, and raise a ValueError."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)  # a formatting bug: reported as the stdlib does
            return
        _batch.flush()  # the service's lines logged before this record go first
        try:
            self.stream.write(line + self.terminator)
            self.flush()
        except _SINK_GONE:
            lost_lines.count += 1


def request_id_of(scope: Scope) -> str:
    """The caller's ``X-Request-ID`` when it is a sane short token, else a new one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            offered: str = value.decode("latin-1")
            if _SANE_REQUEST_ID.match(offered):
                return offered
            break
    return new_id()


class RequestContext:
    """ASGI middleware: binds a request id to every log line of the request, answers it
    in ``X-Request-ID``, and logs one line per request (never its headers or query). An
    exception no handler took is logged here, once with its traceback, and answered 500
    in the error shape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        started = time.perf_counter()
        status: int | None = None  # until the app answers

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                # The last resort, here so that it is logged once: Starlette's own would
                # answer too, then re-raise for the server to log it a second time.
                log.error("unexpected error", exc_info=exc)
                if status is None:  # else the client sees the connection end
                    await internal_error()(scope, receive, send_with_id)
            finally:
                path: str = scope["path"]
                status = 500 if status is None else status
                quiet = path in QUIET_PATHS and status < 400
                log.log(
                    logging.DEBUG if quiet else logging.INFO,
                    "request",
                    method=scope["method"],
                    path=path,
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                    client=(scope.get("client") or ("-",))[0],
                )

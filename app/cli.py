"""The ``erathos-prefect-bridge`` command: serve, erathos-template, check, events, replay,
automation."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog

from app import __version__
from app.admin import nothing_to_replay
from app.automation_command import add_arguments as add_automation_arguments
from app.automation_command import run_command as run_automation_command
from app.database import display_url
from app.diagnose import check_route, simulate
from app.errors import BridgeError, validated
from app.event import METADATA, ErathosEvent
from app.history import History
from app.ingest import iso_utc, parse_json
from app.logs import configure_logging, configured_secrets, hold_standard_streams
from app.records import DeliveryState, DeliveryStillPending, EventState, StoreUnavailable
from app.routes_file import erathos_filters, read_routes_file
from app.service import configure, open_bridge, open_database, shutdown_budget
from app.settings import (
    ConfigurationError,
    PublicSettings,
    Settings,
    StoreSettings,
    load_settings,
)
from app.templates import TemplateError

if TYPE_CHECKING:
    import socket

    import uvicorn

log = structlog.get_logger("erathos_prefect_bridge")

WEBHOOK_PATH = "/webhooks/erathos"
TOKEN_SECRET = "erathos_prefect_bridge_token"  # noqa: S105 (a secret's name, not its value)


def webhook_body_template() -> dict[str, str]:
    """The body Erathos is told to send: every documented ``erathos.*`` field."""
    return {name: f"${{{{erathos.{name}}}}}" for name in METADATA}


def erathos_template(
    settings: PublicSettings, url: str, secret_name: str = TOKEN_SECRET
) -> dict[str, Any]:
    """The webhook definition to create in Erathos, in Erathos's own JSON shape."""
    url = url.rstrip("/")
    if not url.endswith(WEBHOOK_PATH):
        url += WEBHOOK_PATH
    jobs: list[str] = list(settings.jobs)
    rules: list[dict[str, Any]] = []
    emitted = settings.prefect_events
    if settings.routes_file is not None:
        model = read_routes_file(settings.routes_file)
        route_jobs, rules = erathos_filters(model)
        jobs = jobs or route_jobs
        emitted |= any(connection.events for connection in model.connections.values())
    if emitted:
        rules = []  # every load becomes a Prefect event: Erathos must send FAILED ones too
    return {
        "description": "erathos-prefect-bridge: start the Prefect flow of this load",
        "is_active": True,
        "method": "POST",
        "url": url,
        "header": {
            "Content-Type": "application/json",
            "Authorization": f"Bearer ${{{{secrets.{secret_name}}}}}",
        },
        "body": webhook_body_template(),
        # Only rules every route has: a FAILED load is worth recording when some
        # route wants it, and routing decides the rest here.
        "rules": rules,
        "jobs": jobs or ["<ERATHOS_JOB_ID>"],
    }


# Commands that only read or replay the store: they need the database setting alone.
STORE_COMMANDS = ("events", "replay")


def main(argv: Sequence[str] | None = None) -> int:
    hold_standard_streams()  # first: a closed stderr's number must not go to a socket
    parser = _parser()
    args = parser.parse_args(argv)
    command: str = args.command
    try:
        if command == "automation":
            # Needs only the Prefect connection (or nothing, given the deployment's id).
            return run_automation_command(args)
        if command == "erathos-template":
            # Needs only what Erathos is told: works before Prefect is configured.
            public = load_settings(PublicSettings)
            url = args.url or public.public_url
            if not url:
                parser.error("erathos-template needs --url (or BRIDGE_PUBLIC_URL)")
            print(json.dumps(erathos_template(public, url, args.secret_name), indent=2))
            return 0
        if command in STORE_COMMANDS:
            return _store_command(load_settings(StoreSettings), args)
        settings = load_settings()
        # The routes and connections, checked before anything opens.
        routing, _ = configure(settings)
    except (ConfigurationError, TemplateError) as exc:
        report_configuration_error(exc)
        return 2
    secrets = configured_secrets(settings, routing.connections.values())
    configure_logging(settings.log_format, settings.log_level, secrets)
    if command == "serve":
        return _serve(settings, [route.name for route in routing.router.routes])
    try:
        if command == "check":
            return asyncio.run(_check(settings))
        if command == "simulate":
            return _simulate_command(settings, args.event)
    except StoreUnavailable as exc:
        print(f"erathos-prefect-bridge: the store cannot be used: {exc}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {command}")  # pragma: no cover (argparse rejects it first)
    return 2  # pragma: no cover


def report_configuration_error(exc: ConfigurationError | TemplateError) -> None:
    """Every problem on a line of its own, each naming its variable."""
    problems = exc.problems if isinstance(exc, ConfigurationError) else [str(exc)]
    for problem in problems:
        print(f"erathos-prefect-bridge: configuration error: {problem}", file=sys.stderr)


def _store_command(settings: StoreSettings, args: argparse.Namespace) -> int:
    configure_logging(settings.log_format, settings.log_level, configured_secrets(settings))
    try:
        if args.command == "events":
            return asyncio.run(_events(settings, args))
        return asyncio.run(_replay(settings, args))
    except StoreUnavailable as exc:
        print(f"erathos-prefect-bridge: the store cannot be used: {exc}", file=sys.stderr)
        return 1


@contextlib.asynccontextmanager
async def open_history(settings: StoreSettings) -> AsyncIterator[History]:
    """The operators' queries on the store, without the rest of the service."""
    database = await open_database(settings)
    try:
        yield History(database)
    finally:
        await database.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="erathos-prefect-bridge",
        description="Turns Erathos job-completion webhooks into Prefect flow runs.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the service on BRIDGE_HOST:BRIDGE_PORT")
    template = sub.add_parser(
        "erathos-template", help="print the webhook definition to paste into Erathos"
    )
    template.add_argument("--url", help="the service's public URL, e.g. https://bridge.example.com")
    template.add_argument(
        "--secret-name",
        default=TOKEN_SECRET,
        help="the Erathos secret that holds BRIDGE_WEBHOOK_TOKEN (default: %(default)s)",
    )
    sub.add_parser(
        "check", help="validate the settings and routes, and check every target in Prefect"
    )
    simulate = sub.add_parser(
        "simulate", help="show which routes an event matches and the requests it would send"
    )
    simulate.add_argument(
        "event", help="a JSON file with an Erathos event body, or - to read it from stdin"
    )
    events = sub.add_parser("events", help="list stored events, newest first")
    events.add_argument("--state", choices=[s.value for s in EventState])
    events.add_argument(
        "--limit", type=_positive, default=20, help="at most this many (default: %(default)s)"
    )
    events.add_argument("--json", action="store_true", help="print JSON lines")
    add_automation_arguments(
        sub.add_parser(
            "automation",
            help="print (or --create) a Prefect automation that runs a deployment on the "
            "Erathos events the service emits",
        )
    )
    replay = sub.add_parser(
        "replay", help="replay a dead or delivered delivery (or all of an event's)"
    )
    replay.add_argument("id", help="a delivery id, or an event id")
    replay.add_argument(
        "--new-run",
        action="store_true",
        help="use a new idempotency key: Prefect creates a new run",
    )
    return parser


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be 1 or more")
    return number


def _serve(settings: Settings, routes: list[str]) -> int:
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from app.main import create_app
    from app.server import ConnectionLimits, limited_http_protocol

    # Once uvicorn has shut down gracefully it raises the signal that stopped it again;
    # the stop was clean, so the process exits 0 (and a SIGTERM before uvicorn listens,
    # during start-up, exits 0 at once).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    if os.environ.get("FORWARDED_ALLOW_IPS"):
        log.warning(
            "FORWARDED_ALLOW_IPS is not read: list the proxies to trust in BRIDGE_TRUSTED_PROXIES"
        )
    requests_grace, _ = shutdown_budget(settings)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        # httptools (for its speed) with a deadline for every phase of a connection (the
        # idle one too: uvicorn's timeout_keep_alive is not used), header size and
        # connection limits.
        http=limited_http_protocol(ConnectionLimits.of(settings)),
        log_config=None,
        access_log=False,  # app.logs.RequestContext logs each request, with its request id
        # X-Forwarded-For and -Proto are read by app.forwarded, from BRIDGE_TRUSTED_PROXIES
        # only (uvicorn's own trusts 127.0.0.1 by default, and takes any text as a client).
        proxy_headers=False,
        # Annotated int, but handed to asyncio.wait_for, which takes any float.
        timeout_graceful_shutdown=requests_grace,  # type: ignore[arg-type]
        server_header=False,
    )
    server = _server_logging_ready(config, routes)
    # What uvicorn.run does with one process and no reload (after Ctrl-C, uvicorn raises
    # SIGINT again once it has stopped).
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0 if server.started else STARTUP_FAILURE


def _server_logging_ready(config: uvicorn.Config, routes: list[str]) -> uvicorn.Server:
    """uvicorn's server, logging "service ready" once it listens: uvicorn binds its
    socket only after the app's lifespan has opened the service."""
    import uvicorn

    class ListeningServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and not self.should_exit:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                log.info("service ready", host=host, port=port, routes=routes)

    return ListeningServer(config)


def _exit_cleanly(_signal: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


async def _check(settings: Settings) -> int:
    ok = True
    async with open_bridge(settings, dispatch=False) as bridge:
        print(f"store: ok ({display_url(settings.database_url)})")
        usable = set()
        for name, connection in bridge.connections.items():
            health = await connection.health()
            if health.reachable and health.authorized is True:
                usable.add(name)
            else:
                ok = False
            print(f"prefect connection {name!r} ({connection.api_url}): {health.detail}")
        for route in bridge.router.routes:
            if route.connection not in usable:
                print(f"route {route.name!r}: not checked (connection {route.connection!r})")
                continue
            result = await check_route(route, bridge.connections[route.connection], bridge.lookup)
            ok &= result.ok
            print(f"route {route.name!r}: {'ok' if result.ok else 'FAILED'}: {result.detail}")
    print("check passed" if ok else "check FAILED", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _simulate_command(settings: Settings, source: str) -> int:
    """``simulate FILE`` (or ``-``, standard input): the event is read and validated as
    the webhook does it, and refused with the same messages, one line per field."""
    name = "stdin" if source == "-" else source
    try:
        body = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
        event = validated(ErathosEvent, parse_json(body))
    except OSError as exc:
        print(f"erathos-prefect-bridge: {name}: {exc}", file=sys.stderr)
        return 2
    except BridgeError as exc:
        print(f"erathos-prefect-bridge: {name}: {exc.message}", file=sys.stderr)
        for field in exc.fields:
            print(f"  {field.field}: {field.message}", file=sys.stderr)
        return 2
    return asyncio.run(_simulate(settings, event))


async def _simulate(settings: Settings, event: ErathosEvent) -> int:
    async with open_bridge(settings, dispatch=False) as bridge:
        report = simulate(event, bridge.router, bridge.connections, bridge.lookup)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


async def _events(settings: StoreSettings, args: argparse.Namespace) -> int:
    async with open_history(settings) as history:
        state = EventState(args.state) if args.state else None
        page = await history.list_events(state=state, limit=args.limit)
    for event, found in page:
        if args.json:
            print(
                json.dumps(
                    {
                        "event_id": event.id,
                        "execution_id": event.execution_id,
                        "received_at": iso_utc(event.received_at),
                        "table_name": event.table_name,
                        "status": event.status,
                        "reason": event.ignored_reason,
                        "deliveries": [
                            {
                                "id": d.id,
                                "route": d.route,
                                "state": d.state,
                                "attempts": d.attempts,
                                "flow_run_id": d.flow_run_id,
                                "error": d.last_error,
                            }
                            for d in found
                        ],
                    }
                )
            )
            continue
        print(
            f"{iso_utc(event.received_at)}  event {event.id}  execution {event.execution_id}  "
            f"table {event.table_name or '-'}  status {event.status or '-'}"
        )
        if not found:
            print(f"    ignored: {event.ignored_reason}")
        for d in found:
            detail = d.flow_run_id or d.last_error or ""
            print(f"    delivery {d.id}  {d.route}  {d.state}  attempts {d.attempts}  {detail}")
    return 0


async def _replay(settings: StoreSettings, args: argparse.Namespace) -> int:
    async with open_history(settings) as history:
        delivery = await history.get_delivery(args.id)
        targets = [delivery] if delivery is not None else []
        if delivery is None:
            found = await history.get_event(args.id)
            if found is None:
                print(f"no delivery or event {args.id}", file=sys.stderr)
                return 1
            event, found_deliveries = found
            if (why := nothing_to_replay(event, found_deliveries)) is not None:
                print(why, file=sys.stderr)
                return 1
            targets = [d for d in found_deliveries if d.state is not DeliveryState.PENDING]
        for target in targets:
            try:
                await history.replay(target.id, new_run=args.new_run)
            except DeliveryStillPending as exc:
                print(f"delivery {target.id}: {exc}", file=sys.stderr)
                return 1
            print(
                f"delivery {target.id} ({target.route}) is pending again; "
                "the service sends it at its next poll"
            )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``erathos-prefect-bridge`` command: serve, erathos-template, check, events, replay,
sets, automation."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from app import __version__
from app.cli.automation import add_arguments as add_automation_arguments
from app.cli.automation import run_command as run_automation_command
from app.config import (
    ConfigurationError,
    PublicSettings,
    StoreSettings,
    load_settings,
)
from app.errors import StoreUnavailable
from app.logs import configure_logging, hold_standard_streams
from app.routing.templates import TemplateError
from app.service import configure, configured_secrets
from app.storage.records import EventState, RunState

if TYPE_CHECKING:
    pass

from app.cli.checks import check, simulate_command
from app.cli.events import store_command
from app.cli.serve import serve
from app.cli.sets import show_sets
from app.cli.template import TOKEN_SECRET, erathos_template

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
            return store_command(load_settings(StoreSettings), args)
        settings = load_settings()
        # The routes and connections, checked before anything opens.
        routing, _ = configure(settings)
    except (ConfigurationError, TemplateError) as exc:
        report_configuration_error(exc)
        return 2
    secrets = configured_secrets(settings, routing.connections.values())
    configure_logging(settings.log_format, settings.log_level, secrets)
    if command == "serve":
        router = routing.router
        return serve(settings, [r.name for r in router.routes], [s.name for s in router.sets])
    try:
        if command == "check":
            return asyncio.run(check(settings))
        if command == "simulate":
            return simulate_command(settings, args.event)
        if command == "sets":
            return asyncio.run(show_sets(settings, routing.router, as_json=args.json))
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
    sets = sub.add_parser(
        "sets", help="each set's open window: what arrived, what is missing, the deadline"
    )
    sets.add_argument("--json", action="store_true", help="print JSON lines")
    events = sub.add_parser("events", help="list stored events, newest first")
    events.add_argument("--state", choices=[s.value for s in EventState])
    events.add_argument(
        "--run-state",
        choices=[s.value for s in RunState],
        help="only events with a flow run in this state (failed: the loads whose run failed)",
    )
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

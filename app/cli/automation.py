"""The ``automation`` command: print the Prefect automation that runs a deployment on the
service's Erathos events, or create it (``--create``). Reads only the Prefect connection's
settings: it runs before the service is configured, and beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import timedelta
from typing import Any
from uuid import UUID

import app.service as service
from app.cli.automations import (
    EVENT_NAMES,
    OCCURRED,
    AutomationError,
    Deployment,
    When,
    automation_body,
    automations_running,
    chosen_parameters,
    create_automation,
    find_deployment,
    parse_parameters,
)
from app.config import ConfigurationError, PrefectSettings, load_settings
from app.config.values import parse_duration
from app.delivery.client import PrefectConnection
from app.routing.routes_file import default_connection_spec

PROG = "erathos-prefect-bridge"


def connect(settings: PrefectSettings) -> PrefectConnection:
    """The environment's Prefect connection, as the service makes it."""
    spec = default_connection_spec(settings)
    if spec is None:
        raise AutomationError(
            "PREFECT_API_URL: is required (or PREFECT_ACCOUNT_ID and PREFECT_WORKSPACE_ID "
            "for Prefect Cloud) to look the deployment up or to create the automation",
            2,
        )
    return service.connect(spec, settings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``automation`` command's arguments."""
    target = parser.add_argument_group("the deployment to run (by name, by id, or both)")
    target.add_argument(
        "--deployment",
        type=_deployment_name,
        metavar="FLOW/DEPLOYMENT",
        help="the deployment by name, looked up in Prefect (e.g. erathos-dbt/example)",
    )
    target.add_argument(
        "--deployment-id",
        type=UUID,
        metavar="ID",
        help="the deployment's id: printing then needs no Prefect at all",
    )
    when = parser.add_argument_group("the events that run it")
    when.add_argument(
        "--table",
        action="append",
        type=_match_value,
        default=[],
        metavar="TABLE",
        help="only loads of this table (repeat for several; a trailing * matches a prefix)",
    )
    when.add_argument(
        "--schema",
        action="append",
        type=_match_value,
        default=[],
        metavar="SCHEMA",
        help="only loads into this schema (repeat for several)",
    )
    when.add_argument(
        "--status",
        choices=list(EVENT_NAMES),
        default="finished",
        help="finished loads (erathos.job.finished, the default) or failed ones",
    )
    when.add_argument(
        "--debounce",
        type=_seconds,
        metavar="DURATION",
        help="at most one run per table within this time (60s, 5m): later loads of the "
        "table in that window make no run of their own",
    )
    parser.add_argument(
        "--parameters",
        action="append",
        type=_parameters,
        metavar="NAME=FIELD,...",
        help="the run's parameters: deployment parameter NAME takes the Erathos FIELD "
        f"({OCCURRED}: the event's time); FIELD alone means FIELD=FIELD; '' passes none. "
        "Default: every parameter of the deployment named as an Erathos field",
    )
    parser.add_argument("--name", help="the automation's name (default: says what it does)")
    parser.add_argument(
        "--create",
        action="store_true",
        help="create it in the environment's Prefect and print its id (else: print its JSON)",
    )


def run_command(args: argparse.Namespace) -> int:
    """``automation``: 0 done, 2 a wrong argument or setting, 1 what Prefect answered."""
    try:
        return _run(args)
    except ConfigurationError as exc:
        for problem in exc.problems:
            print(f"{PROG}: configuration error: {problem}", file=sys.stderr)
        return 2
    except AutomationError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return exc.exit_code


def _run(args: argparse.Namespace) -> int:
    if args.deployment is None and args.deployment_id is None:
        raise AutomationError("automation needs --deployment FLOW/DEPLOYMENT or --deployment-id", 2)
    requested = _requested_parameters(args.parameters)
    when = When(args.status, tuple(args.table), tuple(args.schema), args.debounce)
    if args.deployment_id is not None and not args.create:
        deployment = Deployment(str(args.deployment_id), args.deployment)
        _print_automation(deployment, when, requested, args.name)
        return 0
    settings = load_settings(PrefectSettings)
    return asyncio.run(_with_prefect(settings, args, when, requested))


async def _with_prefect(
    settings: PrefectSettings,
    args: argparse.Namespace,
    when: When,
    requested: dict[str, str] | None,
) -> int:
    async with connect(settings) as connection:
        deployment = await find_deployment(connection, args.deployment, args.deployment_id)
        if not args.create:
            _print_automation(deployment, when, requested, args.name)
            return 0
        body = _automation(deployment, when, requested, args.name)
        existing = await automations_running(connection, deployment.id)
        if body["name"] in existing:
            raise AutomationError(
                f"Prefect already has the automation {body['name']!r} "
                f"({existing[body['name']]}): a second would run {deployment.label} twice "
                "for each event; delete that one first, or give this one another --name"
            )
        automation_id = await create_automation(connection, body, deployment.id)
        # The connection knows where its UI shows a flow run (self-hosted, Prefect Cloud,
        # PREFECT_UI_URL): the UI's root is above that.
        ui = connection.flow_run_url("").removesuffix("/runs/flow-run/")
    print(automation_id)
    print(
        f"created the automation {body['name']!r}\n"
        f"  automation  {ui}/automations/automation/{automation_id}\n"
        f"  its runs    {ui}/deployments/deployment/{deployment.id}",
        file=sys.stderr,
    )
    return 0


def _automation(
    deployment: Deployment, when: When, requested: dict[str, str] | None, name: str | None
) -> dict[str, Any]:
    parameters, notes = chosen_parameters(requested, deployment)
    for note in notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    return automation_body(deployment, when, parameters, name)


def _print_automation(
    deployment: Deployment, when: When, requested: dict[str, str] | None, name: str | None
) -> None:
    print(json.dumps(_automation(deployment, when, requested, name), indent=2))


def _requested_parameters(given: list[list[tuple[str, str]]] | None) -> dict[str, str] | None:
    if given is None:
        return None
    requested: dict[str, str] = {}
    for name, source in (pair for pairs in given for pair in pairs):
        if name in requested:
            raise AutomationError(f"--parameters: {name} is given more than once", 2)
        requested[name] = source
    return requested


def _deployment_name(value: str) -> str:
    flow, slash, deployment = value.partition("/")
    if not (flow and slash and deployment) or "/" in deployment:
        raise argparse.ArgumentTypeError("must be 'flow-name/deployment-name'")
    return value


def _match_value(value: str) -> str:
    value = value.strip()
    if not value or value == "*":
        raise argparse.ArgumentTypeError("must name something (leave it out to match all)")
    if "*" in value[:-1]:
        # Prefect 3.4 reads only a trailing * as a wildcard (3.9 reads full globs).
        raise argparse.ArgumentTypeError(f"{value!r}: a * only at the end (a prefix match)")
    return value


def _seconds(value: str) -> int:
    duration = parse_duration(value)
    if not isinstance(duration, timedelta) or duration < timedelta(seconds=1):
        raise argparse.ArgumentTypeError(f"{value!r}: a duration of at least 1s (60s, 5m)")
    if duration % timedelta(seconds=1):
        raise argparse.ArgumentTypeError(f"{value!r}: whole seconds")
    return int(duration.total_seconds())


def _parameters(value: str) -> list[tuple[str, str]]:
    try:
        return parse_parameters(value)
    except AutomationError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None

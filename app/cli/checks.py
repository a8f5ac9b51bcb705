"""``check`` and ``simulate``: what each route's target is in Prefect, and what a load
would become, without sending anything."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from app.config import (
    Settings,
)
from app.errors import BridgeError, validated
from app.intake.diagnose import SAMPLE_EVENT, check_route, simulate
from app.routing.event import ErathosEvent
from app.routing.sets import sample_window
from app.server.body import parse_json
from app.service import open_bridge
from app.storage.database import display_url

if TYPE_CHECKING:
    pass


async def check(settings: Settings) -> int:
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
        for table_set in bridge.router.sets:
            route = table_set.route
            if route.connection not in usable:
                print(f"set {table_set.name!r}: not checked (connection {route.connection!r})")
                continue
            window = sample_window(table_set, SAMPLE_EVENT)
            connection = bridge.connections[route.connection]
            result = await check_route(route, connection, bridge.lookup, window)
            ok &= result.ok
            print(f"set {table_set.name!r}: {'ok' if result.ok else 'FAILED'}: {result.detail}")
    print("check passed" if ok else "check FAILED", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def simulate_command(settings: Settings, source: str) -> int:
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

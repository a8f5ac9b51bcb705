"""``events`` and ``replay``: the store, read and replayed from the command line (they
need only the database setting)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from app.config import (
    StoreSettings,
)
from app.errors import StoreUnavailable
from app.logs import configure_logging
from app.service import configured_secrets, open_database
from app.storage.history import History, nothing_to_replay
from app.storage.records import DeliveryState, DeliveryStillPending, EventState
from app.times import iso_utc

if TYPE_CHECKING:
    pass


def store_command(settings: StoreSettings, args: argparse.Namespace) -> int:
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

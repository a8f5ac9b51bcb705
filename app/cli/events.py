"""``events`` and ``replay``: the store, read and replayed from the command line (they
need only the database setting)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator

from app.config import (
    StoreSettings,
)
from app.errors import StoreUnavailable
from app.logs import configure_logging
from app.routing.prefect_event import is_emission
from app.service import configured_secrets, open_database
from app.storage.history import History, nothing_to_replay
from app.storage.records import (
    DeliveryRecord,
    DeliveryState,
    DeliveryStillPending,
    EventState,
    RunState,
    event_run_state,
)
from app.times import iso_utc


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
        run_state = RunState(args.run_state) if args.run_state else None
        page = await history.list_events(state=state, run_state=run_state, limit=args.limit)
    if not page and not args.json:  # (JSON lines: none is no line)
        print("no events match", file=sys.stderr)
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
                        "run_state": event_run_state(found),
                        "deliveries": [
                            {
                                "id": d.id,
                                "route": d.route,
                                "state": d.state,
                                "attempts": d.attempts,
                                "flow_run_id": d.flow_run_id,
                                "run_state": d.run_state,
                                "run_ended_at": iso_utc(d.run_ended_at) if d.run_ended_at else None,
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
            print(f"    delivery {d.id}  {d.route}  {outcome(d)}  attempts {d.attempts}  {detail}")
    return 0


def outcome(d: DeliveryRecord) -> str:
    """A delivery's state as an operator reads it: an emission Prefect took is an "event
    sent"; a flow run, once followed, is its run's state too."""
    if d.state is DeliveryState.DELIVERED and is_emission(d.route):
        return "event sent"
    if d.run_state is not None:
        return f"{d.state}, run {d.run_state}"
    return str(d.state)


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

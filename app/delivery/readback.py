"""Whether Prefect kept an event it was sent. Prefect answers 204 once the event is in its
memory, before its event persister writes it (in batches, every few seconds), so a
Prefect that stops in between loses it: an emission counts as delivered only once the
event is read back by its id (``POST events/filter``), after a short wait, and one that
is not there is sent again (its id is deterministic: Prefect keeps one event per id).

The reads of one connection are asked together, up to ``BATCH`` ids in a request, so a
burst of emissions costs a few reads, not one each.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from dataclasses import replace
from datetime import datetime, timedelta

from app.delivery.client import AttemptResult, Outcome, PrefectConnection
from app.routing.sets import emitted_event
from app.storage.records import Claim

# After Prefect's 2xx, the waits before each read (about 10 s in all: Prefect 3's persister
# writes what it holds at least every 5 s).
READ_WAITS = (1.0, 2.0, 3.0, 4.0)
BATCH = 50  # the most events Prefect answers a filter with
GATHER_SECONDS = 0.05  # reads asked for this close together go in one request
# The read's ``occurred`` range, around the events': Prefect's own default range ends at
# its clock's now, which may be behind ours.
MARGIN = timedelta(hours=1)


class ReadBackFailed(Exception):
    """Prefect could not say whether it has the events (no answer, an error)."""


class ReadBack:
    """One connection's read-backs: :meth:`kept` asks whether Prefect has an event, and the
    questions asked within ``GATHER_SECONDS`` of each other go to Prefect in one request."""

    def __init__(self, connection: PrefectConnection) -> None:
        self.connection = connection
        self._waiting: dict[str, tuple[datetime, list[asyncio.Future[bool]]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def kept(self, event_id: str, occurred: datetime) -> bool:
        """Whether Prefect has the event; raises :class:`ReadBackFailed` when it cannot say."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(event_id, (occurred, []))[1].append(future)
        if self._reader is None:
            self._reader = asyncio.create_task(
                self._read(), name=f"read-back {self.connection.name}"
            )
        return await future

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self) -> None:
        try:
            while self._waiting:
                await asyncio.sleep(GATHER_SECONDS)
                batch = dict(list(self._waiting.items())[:BATCH])
                for event_id in batch:
                    del self._waiting[event_id]
                try:
                    found: set[str] | Exception = await self._ask(batch)
                except Exception as exc:  # ReadBackFailed, or a bug: the askers hear of it
                    found = exc if isinstance(exc, ReadBackFailed) else ReadBackFailed(repr(exc))
                for event_id, (_, futures) in batch.items():
                    for future in futures:
                        if future.done():  # its asker stopped waiting
                            continue
                        if isinstance(found, Exception):
                            future.set_exception(found)
                        else:
                            future.set_result(event_id in found)
        finally:
            self._reader = None

    async def _ask(self, batch: dict[str, tuple[datetime, list[asyncio.Future[bool]]]]) -> set[str]:
        occurred = [when for when, _ in batch.values()]
        query = {
            "filter": {
                "id": {"id": list(batch)},
                "occurred": {
                    "since": (min(occurred) - MARGIN).isoformat(),
                    "until": (max(occurred) + MARGIN).isoformat(),
                },
            },
            "limit": BATCH,
        }
        fetched = await self.connection.fetch("events/filter", post=query)
        if fetched.body is None:
            raise ReadBackFailed(f"reading the events back: {fetched.error}")
        events = fetched.body.get("events")
        if not isinstance(events, list):
            raise ReadBackFailed("reading the events back: Prefect's answer has no events")
        return {str(event.get("id")) for event in events if isinstance(event, dict)}


def emitted(claim: Claim) -> tuple[str, datetime] | None:
    """The id and time of the event an emission's delivery sends; None for a stored event
    that no longer makes one (its attempt says why)."""
    try:
        event = emitted_event(claim.event, claim.delivery.idempotency_key)
    except ValueError:
        return None
    return event["id"], datetime.fromisoformat(event["occurred"])


async def kept_already(claim: Claim, readback: ReadBack) -> AttemptResult | None:
    """For an emission tried before (Prefect may have it already): delivered when Prefect
    has it, so that it is not sent again (a Prefect restarted since would run its
    automations again); None when Prefect has it not, or cannot say: then it is sent."""
    identity = emitted(claim)
    if identity is None:
        return None
    started = time.perf_counter()
    try:
        kept = await readback.kept(*identity)
    except ReadBackFailed:
        return None
    if not kept:
        return None
    duration_ms = (time.perf_counter() - started) * 1000
    return AttemptResult(Outcome.DELIVERED, duration_ms, 200, response_excerpt=KEPT)


KEPT = "read back by id: Prefect has the event"


async def confirmed(
    claim: Claim, sent: AttemptResult, readback: ReadBack, waits: tuple[float, ...] | None = None
) -> AttemptResult:
    """Prefect's 2xx to an emission, once the event is read back (after each of ``waits``,
    by default READ_WAITS): delivered when Prefect has it; else a transient failure, sent
    again at the next attempt (which reads back first)."""
    identity = emitted(claim)
    if identity is None:  # never here: the request was made from the same event
        return sent
    waits = READ_WAITS if waits is None else waits
    for wait in waits:
        await asyncio.sleep(wait)
        try:
            if await readback.kept(*identity):
                return sent
        except ReadBackFailed as exc:
            error = f"HTTP {sent.status_code}, then not read back: {exc}"
            return replace(sent, outcome=Outcome.TRANSIENT, error=error)
    waited = sum(waits)
    error = (
        f"Prefect answered HTTP {sent.status_code} but had not kept the event {waited:g} s "
        "later (read back by id): it is sent again"
    )
    return replace(sent, outcome=Outcome.TRANSIENT, error=error)

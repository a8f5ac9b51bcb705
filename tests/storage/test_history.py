"""What operators read and change (app/storage/history.py) on SQLite and PostgreSQL: events listed
by state, job, table and time, page by page; attempts; replays; pruning; the queue summary."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from app.storage.database import Database
from app.storage.history import History, replay_key
from app.storage.records import (
    DeliveryNotFound,
    DeliveryRecord,
    DeliveryState,
    DeliveryStillPending,
    DeliveryUpdate,
    EventRecord,
    EventState,
    Recorded,
    event_state,
)
from app.storage.schema import attempts, deliveries
from app.storage.store import Store
from tests.support.stores import (
    CONNECTION,
    LONG,
    attempt_of,
    complete,
    delivery,
    ending,
    finished,
    opened,
    record,
    rows,
    set_columns,
)
from tests.support.waiting import ManualClock

# Tests taking database_url (or history) run on a SQLite file and on a fresh PostgreSQL
# database. Events are recorded through the store (test_store.py tests it), its time a
# ManualClock moved by hand.
pytestmark = [pytest.mark.anyio, pytest.mark.every_database]

REPLAY_KEY = re.compile(r"^(?P<original>.+):replay-[0-9a-f]{8}$")


async def deliveries_of(history: History, recorded: Recorded) -> list[DeliveryRecord]:
    return [await delivery(history, d.id) for d in recorded.deliveries]


# -- listing ----------------------------------------------------------------------------


async def test_events_are_listed_by_the_states_of_their_deliveries(
    store: Store, history: History, clock: ManualClock
) -> None:
    """Each event under the one state its deliveries sum up to, as the console shows it:
    dead if any is, else pending if any is, delivered when all are, ignored when it has
    none (schema 4 keeps it as a column, so each filter is an index range). Newest first."""
    pending = await record(store, "pending")
    clock.advance(1)
    delivered = await finished(store, DeliveryState.DELIVERED, execution_id="delivered")
    clock.advance(1)
    dead = await finished(store, DeliveryState.DEAD, execution_id="dead")
    clock.advance(1)
    ignored = await record(store, "ignored", routes=(), ignored_reason="no route matched")
    clock.advance(1)
    mixed = await record(store, "delivered-and-dead", routes=("a", "b"), claim_for="w")
    a, b = mixed.deliveries
    assert await complete(store, a, "w", ending(DeliveryState.DELIVERED, clock()))
    assert await complete(store, b, "w", ending(DeliveryState.DEAD, clock()))
    clock.advance(1)
    half = await record(store, "pending-and-dead", routes=("a", "b"), claim_for="w")
    assert await complete(store, half.deliveries[0], "w", ending(DeliveryState.DEAD, clock()))

    expected = {
        EventState.PENDING: [pending],
        EventState.DELIVERED: [delivered],
        EventState.DEAD: [half, mixed, dead],
        EventState.IGNORED: [ignored],
    }
    assert set(expected) == set(EventState)
    for state, wanted in expected.items():
        listed = await history.list_events(state=state)
        assert [e.id for e, _ in listed] == [r.event.id for r in wanted], state
    everything = await history.list_events()
    assert [e.id for e, _ in everything] == [
        r.event.id for r in (half, mixed, ignored, dead, delivered, pending)
    ]
    # A state named by a caller (the admin API, the CLI) is one of these, or refused.
    with pytest.raises(ValueError, match="lost"):
        EventState("lost")


async def test_events_are_filtered_by_job_table_and_time_received(
    store: Store, history: History, clock: ManualClock
) -> None:
    first = (await record(store, "e1", job_id="job-a", table_name="orders")).event
    clock.advance(1)
    second = (await record(store, "e2", job_id="job-b", table_name="orders")).event
    clock.advance(1)
    third = (await record(store, "e3", job_id="job-a", table_name="customers")).event

    cases: list[tuple[dict[str, Any], list[EventRecord]]] = [
        ({}, [third, second, first]),
        ({"job_id": "job-a"}, [third, first]),
        ({"table_name": "orders"}, [second, first]),
        ({"job_id": "job-a", "table_name": "orders"}, [first]),
        ({"job_id": "job-z"}, []),
        ({"since": second.received_at}, [third, second]),
        ({"until": second.received_at}, [first]),
        ({"since": second.received_at, "until": third.received_at}, [second]),
        ({"execution_id_contains": "E2"}, [second]),  # any case
        ({"execution_id_contains": "e"}, [third, second, first]),
        ({"execution_id_contains": "_"}, []),  # a character, not LIKE's wildcard
        ({"execution_id_contains": "%"}, []),
        ({"limit": 2}, [third, second]),
    ]
    for filters, wanted in cases:
        listed = await history.list_events(**filters)
        assert [e.execution_id for e, _ in listed] == [e.execution_id for e in wanted], filters


async def test_outcomes_by_hour_sum_each_event_up_as_its_deliveries_do(
    store: Store, history: History, clock: ManualClock
) -> None:
    """The console's counts and chart: the state of each event received since a time, as
    event_state() and the listing's state filter decide it, counted per hour."""
    await finished(store, DeliveryState.DELIVERED, execution_id="before-the-window")
    clock.advance(10)
    since = clock()
    await record(store, "pending")
    clock.advance(1)
    await finished(store, DeliveryState.DELIVERED, execution_id="delivered")
    clock.advance(1)
    await finished(store, DeliveryState.DEAD, execution_id="dead")
    clock.advance(1)
    await record(store, "ignored", routes=(), ignored_reason="no route matched")
    clock.advance(1)
    mixed = await record(store, "delivered-and-dead", routes=("a", "b"), claim_for="w")
    a, b = mixed.deliveries
    assert await complete(store, a, "w", ending(DeliveryState.DELIVERED, clock()))
    assert await complete(store, b, "w", ending(DeliveryState.DEAD, clock()))

    outcomes = await history.outcomes_by_hour(since)
    listed = await history.list_events(since=since)

    hour = since - since % 3600  # every event above arrived in this one
    assert outcomes == [
        (hour, EventState.IGNORED, 1),
        (hour, EventState.DELIVERED, 1),
        (hour, EventState.PENDING, 1),
        (hour, EventState.DEAD, 2),
    ]
    assert Counter({state: n for _, state, n in outcomes}) == Counter(
        event_state(found) for _, found in listed
    )


async def test_outcomes_by_hour_put_each_event_in_the_clock_hour_it_arrived_in(
    store: Store, history: History, clock: ManualClock
) -> None:
    """Grouped in the database, floored (never rounded) to the hour on either store."""
    hour = clock() - clock() % 3600
    for offset in (-1.0, 0.0, 1799.9, 1800.1, 3599.999, 7200.5):
        clock.now = hour + offset
        await finished(store, DeliveryState.DELIVERED)

    outcomes = await history.outcomes_by_hour(hour - 3600)
    listed = await history.list_events(since=hour - 3600)

    assert outcomes == [
        (hour - 3600, EventState.DELIVERED, 1),
        (hour, EventState.DELIVERED, 4),
        (hour + 7200, EventState.DELIVERED, 1),
    ]
    assert sum(n for _, _, n in outcomes) == len(listed)


async def test_pending_deliveries_are_listed_next_due_first_with_their_events(
    store: Store, history: History, database: Database, clock: ManualClock
) -> None:
    first = await record(store, "due-later")
    second = await record(store, "due-sooner")
    await finished(store, DeliveryState.DEAD, execution_id="dead")
    await set_columns(database, deliveries, first.deliveries[0].id, next_attempt_at=clock() + 60)

    pending = await history.pending_deliveries(limit=10)
    [only] = await history.pending_deliveries(limit=1)

    assert [(d.id, e.execution_id) for d, e in pending] == [
        (second.deliveries[0].id, "due-sooner"),
        (first.deliveries[0].id, "due-later"),
    ]
    assert pending[1][0].next_attempt_at == clock() + 60
    assert pending[0][1].payload == {"execution_id": "due-sooner"}
    assert only == pending[0]


@pytest.mark.parametrize("tied", [False, True], ids=["distinct-times", "tied-times"])
async def test_event_pages_go_through_everything_newest_first(
    store: Store, history: History, clock: ManualClock, tied: bool
) -> None:
    recorded = []
    for i in range(25):
        recorded.append(await record(store, f"e{i:02}"))
        if not tied or i % 4 == 3:  # tied: four events share a time, the id breaks the tie
            clock.advance(1)
    if tied:
        assert len({r.event.received_at for r in recorded}) == 7
    everything = await history.list_events(limit=100)

    pages: list[list[str]] = []
    before: tuple[float, str] | None = None
    for _ in range(5):  # bounded: a cursor that does not advance must fail, not hang
        page = await history.list_events(limit=10, before=before)
        if not page:
            break
        pages.append([e.id for e, _ in page])
        last = page[-1][0]
        before = (last.received_at, last.id)

    assert [len(p) for p in pages] == [10, 10, 5]
    assert [i for p in pages for i in p] == [e.id for e, _ in everything]
    assert len(everything) == 25
    keys = [(e.received_at, e.id) for e, _ in everything]
    assert keys == sorted(keys, reverse=True)
    assert all(len(ds) == 1 for _, ds in everything)


# -- events, deliveries, attempts -------------------------------------------------------


async def test_an_event_is_read_back_with_its_deliveries_and_every_attempt_in_order(
    store: Store, history: History, clock: ManualClock
) -> None:
    recorded = await record(store, routes=("a", "b"), claim_for="w", lease_seconds=LONG)
    a, b = recorded.deliveries
    retry = DeliveryUpdate(DeliveryState.PENDING, 503, "HTTP 503", next_attempt_at=clock() + 5)
    sent = [attempt_of(a, retry, clock())]
    assert await store.complete_attempt(sent[-1], retry, "w")
    dead = ending(DeliveryState.DEAD, clock())
    sent.append(attempt_of(b, dead, clock()))
    assert await store.complete_attempt(sent[-1], dead, "w")
    clock.advance(5)
    [again] = await store.claim_due("w", CONNECTION, 10, LONG)
    done = ending(DeliveryState.DELIVERED, clock(), flow_run_id="run-1")
    sent.append(attempt_of(again.delivery, done, clock()))
    assert await store.complete_attempt(sent[-1], done, "w")

    found = await history.get_event(recorded.event.id)
    assert found == (
        recorded.event,
        [done.applied_to(again.delivery), dead.applied_to(b)],
    )
    read = await history.attempts_of([a.id, b.id])
    assert [replace(x, id=0) for x in read] == sorted(sent, key=lambda x: x.delivery_id)
    assert [x.number for x in read if x.delivery_id == a.id] == [1, 2]
    assert [x.id for x in read if x.delivery_id == a.id] == sorted(
        x.id for x in read if x.delivery_id == a.id
    )
    assert await history.attempts_of([b.id]) == [x for x in read if x.delivery_id == b.id]
    assert await history.attempts_of([]) == []
    assert await history.get_event(uuid.uuid4().hex) is None
    assert await history.get_delivery(uuid.uuid4().hex) is None


# -- replay -----------------------------------------------------------------------------


@pytest.mark.parametrize("state", [DeliveryState.DEAD, DeliveryState.DELIVERED])
@pytest.mark.parametrize("new_run", [False, True])
async def test_a_replayed_delivery_is_pending_and_due_now_with_a_fresh_budget(
    store: Store, history: History, clock: ManualClock, state: DeliveryState, new_run: bool
) -> None:
    [original] = (await finished(store, state)).deliveries
    await set_columns(
        store.database, deliveries, original.id, flow_run_id="run-1", flow_run_url="http://x"
    )
    clock.advance(30)

    replayed = await history.replay(original.id, new_run=new_run)

    assert replayed == await delivery(history, original.id)
    assert replayed.state is DeliveryState.PENDING
    assert (replayed.attempts, replayed.budget_used) == (1, 0)  # counted, not spent
    assert replayed.window_started_at == clock()
    assert replayed.next_attempt_at == clock()
    assert (replayed.lease_owner, replayed.lease_expires_at, replayed.finished_at) == (
        None,
        None,
        None,
    )
    if new_run:
        match = REPLAY_KEY.match(replayed.idempotency_key)
        assert match is not None
        assert match["original"] == original.idempotency_key
        assert (replayed.flow_run_id, replayed.flow_run_url) == (None, None)
    else:
        assert replayed.idempotency_key == original.idempotency_key
        assert (replayed.flow_run_id, replayed.flow_run_url) == ("run-1", "http://x")
    [claim] = await store.claim_due("loop", CONNECTION, 10, LONG)
    assert claim.delivery.id == original.id


async def test_attempts_across_replays_are_counted_and_numbered_in_the_order_made(
    store: Store, history: History, clock: ManualClock
) -> None:
    [original] = (await finished(store, DeliveryState.DEAD)).deliveries

    for _ in range(2):
        clock.advance(1)
        await history.replay(original.id)
        [claim] = await store.claim_due("loop", CONNECTION, 10, LONG)
        assert claim.delivery.budget_used == 1  # a fresh budget after each replay
        assert await complete(store, claim.delivery, "loop", ending(DeliveryState.DEAD, clock()))

    found = await delivery(history, original.id)
    assert (found.attempts, found.budget_used) == (3, 1)
    assert [a.number for a in await history.attempts_of([original.id])] == [1, 2, 3]
    [(_, listed)] = await history.list_events()
    assert listed[0].attempts == 3


async def test_deliveries_are_listed_in_the_order_routing_made_them_everywhere(
    store: Store, history: History
) -> None:
    recorded = await record(store, routes=("zeta", "alpha", "prefect-event"))
    again = await record(store, recorded.event.execution_id, routes=())

    routed = ["zeta", "alpha", "prefect-event"]
    assert [d.route for d in recorded.deliveries] == routed  # the first answer's
    assert [d.route for d in again.deliveries] == routed  # a duplicate's
    found = await history.get_event(recorded.event.id)
    assert found is not None
    assert [d.route for d in found[1]] == routed
    [(_, listed)] = await history.list_events()
    assert [d.route for d in listed] == routed


async def test_replaying_with_a_new_run_twice_derives_from_the_original_key(
    store: Store, history: History, clock: ManualClock
) -> None:
    [original] = (await finished(store, DeliveryState.DELIVERED)).deliveries

    keys = []
    for _ in range(2):
        keys.append((await history.replay(original.id, new_run=True)).idempotency_key)
        [claim] = await store.claim_due("loop", CONNECTION, 10, LONG)
        assert await complete(
            store, claim.delivery, "loop", ending(DeliveryState.DELIVERED, clock())
        )

    assert keys[0] != keys[1]
    for key in keys:
        match = REPLAY_KEY.match(key)
        assert match is not None
        assert match["original"] == original.idempotency_key


def test_a_replay_key_is_the_original_key_with_a_fresh_suffix() -> None:
    key = "exec-1:main"

    first, second = replay_key(key), replay_key(key)
    again = replay_key(first)

    assert first != second
    for derived in (first, second, again):
        match = REPLAY_KEY.match(derived)
        assert match is not None
        assert match["original"] == key
    # Only a suffix replay_key made is replaced; one that merely looks alike is kept.
    assert REPLAY_KEY.match(replay_key("exec-1:replay-final")) is not None
    assert replay_key("exec-1:replay-final").startswith("exec-1:replay-final:replay-")


async def test_a_pending_or_unknown_delivery_cannot_be_replayed(
    store: Store, history: History
) -> None:
    [pending] = (await record(store)).deliveries

    with pytest.raises(DeliveryStillPending, match="still pending") as still_pending:
        await history.replay(pending.id)
    assert still_pending.value.delivery_id == pending.id
    unknown = uuid.uuid4().hex
    with pytest.raises(DeliveryNotFound, match=unknown):
        await history.replay(unknown)
    assert await delivery(history, pending.id) == pending


async def test_replays_of_one_delivery_by_replicas_at_once_make_it_pending_once(
    database_url: str, store: Store, history: History, clock: ManualClock
) -> None:
    """Each replay is a fresh budget and, with ``new_run``, a new flow run: only one of
    several made at once may take effect; the others find the delivery pending."""
    [dead] = (await finished(store, DeliveryState.DEAD)).deliveries
    async with opened(database_url) as other_database:
        other = History(other_database, clock)
        outcomes = await asyncio.gather(
            *(h.replay(dead.id, new_run=True) for h in (history, other) * 3),
            return_exceptions=True,
        )

    replayed = [o for o in outcomes if isinstance(o, DeliveryRecord)]
    refused = [o for o in outcomes if isinstance(o, DeliveryStillPending)]
    assert len(replayed) == 1, outcomes
    assert len(refused) == 5, outcomes
    assert await delivery(history, dead.id) == replayed[0]


# -- prune ------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [500, 2])
async def test_pruning_deletes_old_finished_events_with_their_deliveries_and_attempts(
    store: Store, history: History, clock: ManualClock, batch: int
) -> None:
    old_finished = [await finished(store, DeliveryState.DELIVERED) for _ in range(4)]
    old_finished.append(await record(store, routes=(), ignored_reason="no route"))
    old_dead = await finished(store, DeliveryState.DEAD)
    old_pending = await record(store)
    old_mixed = await record(store, routes=("a", "b"), claim_for="w")
    first, second = old_mixed.deliveries
    assert await complete(store, first, "w", ending(DeliveryState.DELIVERED, clock()))
    assert await complete(store, second, "w", ending(DeliveryState.DEAD, clock()))
    clock.advance(1)
    cut_off = clock()
    # Received at the cut-off itself: not before it, so kept.
    newer = await finished(store, DeliveryState.DELIVERED)
    newer_ignored = await record(store, routes=(), ignored_reason="no route")
    pruned_deliveries = [d.id for r in old_finished for d in r.deliveries]
    assert len(await history.attempts_of(pruned_deliveries)) == 4

    removed = await history.prune(cut_off, batch=batch)

    assert removed == 5
    for r in old_finished:
        assert await history.get_event(r.event.id) is None
    for r in (old_dead, old_pending, old_mixed, newer, newer_ignored):
        assert await history.get_event(r.event.id) == (r.event, await deliveries_of(history, r))
    assert await history.attempts_of(pruned_deliveries) == []
    assert await rows(history.database, deliveries) == 1 + 1 + 2 + 1
    assert await rows(history.database, attempts) == 1 + 2 + 1
    assert await history.prune(cut_off, batch=batch) == 0


# -- the queue at a glance --------------------------------------------------------------


async def test_the_pending_summary_counts_pending_deliveries_per_connection_since_the_oldest(
    store: Store, history: History, clock: ManualClock
) -> None:
    """Per connection: how many deliveries are pending (leased or not) and since when the
    oldest of them has been due (its window's start, which a replay starts again)."""
    assert await history.pending_summary() == {}
    start = clock()
    [oldest] = (await record(store)).deliveries
    clock.advance(1)
    await record(store, routes=("x", "y"), claim_for="w", lease_seconds=LONG)
    clock.advance(1)
    await finished(store, DeliveryState.DELIVERED)
    [dead] = (await finished(store, DeliveryState.DEAD)).deliveries
    clock.advance(1)
    await record(store, connection="elsewhere")

    assert await history.pending_summary() == {CONNECTION: (3, start), "elsewhere": (1, start + 3)}

    clock.advance(7)
    await history.replay(dead.id)
    [claim] = await store.claim_due("loop", CONNECTION, 1, LONG)
    assert claim.delivery.id == oldest.id
    assert await complete(store, claim.delivery, "loop", ending(DeliveryState.DELIVERED, clock()))

    assert await history.pending_summary() == {
        CONNECTION: (3, start + 1),
        "elsewhere": (1, start + 3),
    }

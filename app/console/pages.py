"""The console's pages: the overview, the events, one event, the dead letters, and the
replay their forms ask for. Each reads the admin API's queries
(:class:`app.storage.history.History`) and replays as the admin API does."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.console.access import ConsoleDep, FormDep, Refused, SessionDep, first
from app.console.runs import RUN_FILTER_STATES, final_counts, freshness_rows
from app.console.views import (
    COUNT_ORDER,
    EventFilter,
    hourly_chart,
    payload_fields,
    state_counts,
    target_of,
)
from app.service import Bridge, BridgeDep
from app.storage.history import page_cursor
from app.storage.records import (
    DeliveryNotFound,
    DeliveryState,
    DeliveryStillPending,
    EventState,
    event_state,
)

DAY = 86400.0
PAGE = 50
PENDING_SHOWN = 20
# Deliveries one replay may name: more than a full dead-letters page shows unless its
# PAGE events average over ten dead deliveries each (routes plus Prefect events).
MAX_SELECTED = 500


def add_pages(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse)
    async def overview(
        request: Request, _: SessionDep, console: ConsoleDep, bridge: BridgeDep
    ) -> Response:
        now = bridge.history.clock()
        outcomes = await bridge.history.outcomes_by_hour(now - DAY)
        pending = await bridge.history.pending_deliveries(limit=PENDING_SHOWN)
        queued = await bridge.history.pending_summary()
        finals = await bridge.runs.final_counts(now - DAY)
        freshness = await bridge.runs.freshness(now - DAY)
        mask = masker(bridge)
        connections = [
            {
                "name": status.name,
                "circuit": status.circuit.value,
                "window": status.window,
                "in_flight": status.in_flight,
                "pending": queued.get(status.name, (0, now))[0],
                "oldest": queued[status.name][1] if status.name in queued else None,
            }
            for status in sorted(bridge.dispatcher.status().values(), key=lambda s: s.name)
        ]
        context = {
            "nav": "overview",
            "counts": state_counts(outcomes),
            "chart": hourly_chart(outcomes, now - DAY, now),
            "pending": [(d, e, mask(d.last_error)) for d, e in pending],
            "connections": connections,
            "queued": sum(count for count, _ in queued.values()),
            "run_counts": final_counts(finals),
            "following": bridge.settings.follow_runs,
            "freshness": freshness_rows(freshness),
            "now": now,
        }
        return console.page(request, "overview.html", context)

    @app.get("/events", response_class=HTMLResponse)
    async def events(
        request: Request, _: SessionDep, console: ConsoleDep, bridge: BridgeDep
    ) -> Response:
        wanted = EventFilter.of(request.query_params)
        page = []
        if not wanted.errors:
            page = await bridge.history.list_events(
                state=wanted.state,
                run_state=wanted.run,
                job_id=wanted.job,
                table_name=wanted.table,
                execution_id_contains=wanted.text,
                since=wanted.since,
                until=wanted.until,
                before=wanted.before,
                limit=PAGE,
            )
        context = {
            "nav": "events",
            "filter": wanted,
            "states": [s.value for s in COUNT_ORDER],
            "run_states": [s.value for s in RUN_FILTER_STATES],
            "rows": [(e, found, event_state(found)) for e, found in page],
            "older": wanted.query(cursor=page_cursor(page[-1][0])) if len(page) == PAGE else None,
            "mask": masker(bridge),
        }
        status = 400 if wanted.errors else 200
        return console.page(request, "events.html", context, status)

    @app.get("/events/{event_id}", response_class=HTMLResponse)
    async def event(
        event_id: str, request: Request, _: SessionDep, console: ConsoleDep, bridge: BridgeDep
    ) -> Response:
        found = await bridge.history.get_event(event_id[:64])
        if found is None:
            raise Refused(404, f"no event {event_id[:64]}")
        stored, deliveries = found
        tried = await bridge.history.attempts_of([d.id for d in deliveries])
        context = {
            "nav": "events",
            "event": stored,
            "state": event_state(deliveries),
            "fields": payload_fields(stored.payload),
            "deliveries": [
                (d, target_of(bridge.router, d), [a for a in tried if a.delivery_id == d.id])
                for d in deliveries
            ],
            "mask": masker(bridge),
            "notice": notice_of(request),
        }
        return console.page(request, "event.html", context)

    @app.get("/dead", response_class=HTMLResponse)
    async def dead_letters(
        request: Request, _: SessionDep, console: ConsoleDep, bridge: BridgeDep
    ) -> Response:
        # A cursor this page did not make is a 400 naming it, as on the events page:
        # never quietly the first page instead.
        wanted = EventFilter.of({"cursor": request.query_params.get("cursor", "")})
        page = []
        if not wanted.errors:
            page = await bridge.history.list_events(
                state=EventState.DEAD, before=wanted.before, limit=PAGE
            )
        rows = [(e, [d for d in found if d.state is DeliveryState.DEAD]) for e, found in page]
        context = {
            "nav": "dead",
            "rows": rows,
            "errors": wanted.errors,
            "older": urlencode({"cursor": page_cursor(page[-1][0])}) if len(page) == PAGE else None,
            "mask": masker(bridge),
            "notice": notice_of(request),
        }
        return console.page(request, "dead.html", context, 400 if wanted.errors else 200)

    @app.post("/replay", response_class=HTMLResponse)
    async def replay(
        request: Request, form: FormDep, console: ConsoleDep, bridge: BridgeDep
    ) -> Response:
        """Replay the deliveries chosen (``one``, or every ``delivery`` ticked). A new run
        is asked for with ``mode=new`` and done only once ``confirmed``: the page between
        says what it means."""
        back = back_of(request, form)
        ids = selected(form)
        new_run = first(form, "mode") == "new"
        if not ids:
            return RedirectResponse(with_notice(back, "nothing was selected"), 303)
        if new_run and first(form, "confirmed") != "yes":
            context = {
                "nav": "dead",
                "deliveries": await bridge.history.get_deliveries(ids),
                "back": back,
            }
            return console.page(request, "confirm.html", context)
        done, skipped = await replay_all(bridge, ids, new_run=new_run)
        bridge.dispatcher.wake()
        return RedirectResponse(with_notice(back, replayed(done, skipped, new_run)), 303)


def back_of(request: Request, form: dict[str, list[str]]) -> str:
    """Where the replay's answer goes: the console page the form was on, never a
    redirect elsewhere."""
    base = request.scope.get("root_path", "")
    back = first(form, "back") or ""
    if not back.startswith(f"{base}/") or "//" in back:
        return f"{base}/dead"
    return back


def selected(form: dict[str, list[str]]) -> list[str]:
    """The deliveries a replay form names (``one``, or every ``delivery`` ticked), each
    once. More than MAX_SELECTED is refused rather than cut short: an operator who
    ticked them must not be told fewer were meant."""
    one = first(form, "one")
    chosen = [one] if one else form.get("delivery", [])
    if len(chosen) > MAX_SELECTED:
        raise Refused(400, f"delivery: {len(chosen)} selected, at most {MAX_SELECTED} at a time")
    return list(dict.fromkeys(i[:64] for i in chosen if i))


def replayed(done: int, skipped: int, new_run: bool) -> str:
    """The notice after a replay: how many were replayed, and how many could not be."""
    kind = "as new runs" if new_run else "with their idempotency keys"
    message = f"{done} replayed {kind}"
    if done:
        message += ": the service sends them now"
    if skipped:
        message += f"; {skipped} skipped (pending already, or gone)"
    return message


async def replay_all(bridge: Bridge, ids: list[str], *, new_run: bool) -> tuple[int, int]:
    """Replay each delivery as the admin API does; count those that could not be (still
    pending, replayed meanwhile, or gone)."""
    done = skipped = 0
    for delivery_id in ids:
        try:
            await bridge.history.replay(delivery_id, new_run=new_run)
            done += 1
        except (DeliveryNotFound, DeliveryStillPending):
            skipped += 1
    return done, skipped


def masker(bridge: Bridge) -> Callable[[str | None], str]:
    """What a page shows, every configured secret masked in every form (attempts are
    stored masked already: this is the last guard, as in the logs)."""
    return bridge.masker.mask


def with_notice(path: str, message: str) -> str:
    separator = "&" if "?" in path else "?"
    return f"{path}{separator}{urlencode({'notice': message})}"


def notice_of(request: Request) -> str | None:
    notice = request.query_params.get("notice")
    return notice[:300] if notice else None

"""The console's page of the routes file's sets: each set with its open window (what
arrived, what is missing, the deadline), and its past windows, the late ones marked."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from app.console.access import ConsoleDep, SessionDep
from app.routing.sets import members_of
from app.service import BridgeDep
from app.storage.set_windows import WindowView

PAST_SHOWN = 30  # each set's past windows on the page


def add_set_pages(app: FastAPI) -> None:
    @app.get("/sets", response_class=HTMLResponse)
    async def sets(
        request: Request, _: SessionDep, console: ConsoleDep, bridge: BridgeDep
    ) -> Response:
        router = bridge.router
        recent: dict[str, list[WindowView]] = {}
        if bridge.windows is not None:
            names = [s.name for s in router.sets]
            recent = await bridge.windows.recent(members_of(router.sets), names, PAST_SHOWN + 1)
        shown = []
        for table_set in router.sets:
            found = recent.get(table_set.name, [])
            shown.append(
                {
                    "set": table_set,
                    "current": [w for w in found if w.state == "open"],
                    "past": [w for w in found if w.state != "open"][:PAST_SHOWN],
                }
            )
        checked = bridge.deadlines.checked_at if bridge.deadlines is not None else None
        context = {"nav": "sets", "sets": shown, "checked": checked}
        return console.page(request, "sets.html", context)

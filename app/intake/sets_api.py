"""The admin API of the routes file's sets (only with ``BRIDGE_ADMIN_TOKEN``): each set
with its open window (what arrived, what is missing, the deadline), and past windows."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from app.errors import NotFound, ServiceUnavailable, Unauthorized, responses
from app.intake.auth import require_admin_token
from app.routing.sets import TableSet, members_of
from app.service import Bridge, BridgeDep
from app.storage.records import RunState
from app.storage.set_windows import WindowView
from app.storage.sets import WindowState
from app.times import utc_time

sets_router = APIRouter(
    tags=["admin"],
    dependencies=[Depends(require_admin_token)],
    responses=responses(Unauthorized, ServiceUnavailable),
)


class WindowOut(BaseModel):
    set: str
    window: str = Field(description="the window's id, as ${{set.window}} gives it")
    state: WindowState
    late: bool
    starts_at: datetime
    deadline: datetime
    opened_at: datetime
    closed_at: datetime | None
    loads: list[dict[str, Any]] = Field(description="one per member that arrived")
    missing: list[str]
    event_id: str | None = Field(description="the event its closing made: GET /events/{id}")
    run_state: RunState | None = Field(
        description="the state of the flow run its closing made, as followed in Prefect"
    )

    @classmethod
    def of(cls, view: WindowView) -> WindowOut:
        return cls(
            set=view.set_name,
            window=view.window,
            state=view.state,
            late=view.state is WindowState.LATE,
            starts_at=utc_time(view.starts_at),
            deadline=utc_time(view.deadline_at),
            opened_at=utc_time(view.opened_at),
            closed_at=utc_time(view.closed_at) if view.closed_at is not None else None,
            loads=view.loads,
            missing=view.missing,
            event_id=view.event_id,
            run_state=view.run_state,
        )


class SetOut(BaseModel):
    name: str
    members: list[str]
    window: str = Field(description="its kind of window, in words")
    when_late: str
    target: str
    open_window: WindowOut | None


class SetsPage(BaseModel):
    sets: list[SetOut]
    deadlines_checked_at: datetime | None = Field(
        description="when this replica last closed the windows past their deadline"
    )


class WindowsPage(BaseModel):
    windows: list[WindowOut]


async def set_windows(
    bridge: Bridge,
    *,
    open_only: bool = False,
    set_name: str | None = None,
    limit: int = 50,
) -> list[WindowView]:
    if bridge.windows is None:
        return []
    members = members_of(bridge.router.sets)
    return await bridge.windows.windows(
        members, open_only=open_only, set_name=set_name, limit=limit
    )


def _set_out(table_set: TableSet, open_window: WindowView | None) -> SetOut:
    return SetOut(
        name=table_set.name,
        members=[m.text for m in table_set.members],
        window=table_set.window.describe(),
        when_late=table_set.when_late,
        target=table_set.route.target.label,
        open_window=WindowOut.of(open_window) if open_window is not None else None,
    )


@sets_router.get("/sets", response_model=SetsPage, summary="The sets and their open windows")
async def list_sets(bridge: BridgeDep) -> SetsPage:
    open_windows = await set_windows(bridge, open_only=True, limit=500)
    by_set = {w.set_name: w for w in reversed(open_windows)}
    checked = bridge.deadlines.checked_at if bridge.deadlines is not None else None
    return SetsPage(
        sets=[_set_out(s, by_set.get(s.name)) for s in bridge.router.sets],
        deadlines_checked_at=utc_time(checked) if checked is not None else None,
    )


@sets_router.get(
    "/sets/{name}/windows",
    response_model=WindowsPage,
    summary="A set's windows, newest first (open, completed, late)",
    responses=responses(NotFound),
)
async def list_windows(
    name: str, bridge: BridgeDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> WindowsPage:
    if bridge.router.table_set(name) is None:
        raise NotFound(f"no set {name!r} in the routes file")
    found = await set_windows(bridge, set_name=name, limit=limit)
    return WindowsPage(windows=[WindowOut.of(w) for w in found])

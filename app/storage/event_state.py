"""An event's state as a column (``events.state``), kept in the same transaction as the
deliveries it sums up, so that listing events by state, the dead letters and the
overview's counts are index ranges instead of a search through every delivery.

The rule is :func:`app.storage.records.event_state`'s: dead if any delivery is, pending if any
is, delivered when all are, ignored when it has none. A delivery's state changes when an
attempt ends it (:meth:`app.storage.store.Store.complete_attempt`) and when it is replayed
(:meth:`app.storage.history.History.replay`); both call :func:`refresh_state` then.
"""

from __future__ import annotations

from sqlalchemy import bindparam, case, exists, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from app.storage.database import sqlite_sql
from app.storage.records import DeliveryState, EventState
from app.storage.schema import deliveries, events


def _has(state: DeliveryState) -> ColumnElement[bool]:
    return exists().where(deliveries.c.event_id == events.c.id, deliveries.c.state == state.value)


# The state the event's deliveries make, as SQL over the event's row.
SUMMED_UP = case(
    (_has(DeliveryState.DEAD), EventState.DEAD.value),
    (_has(DeliveryState.PENDING), EventState.PENDING.value),
    (_has(DeliveryState.DELIVERED), EventState.DELIVERED.value),
    else_=EventState.IGNORED.value,
)
_OF_DELIVERY = (
    select(deliveries.c.event_id)
    .where(deliveries.c.id == bindparam("b_delivery_id"))
    .scalar_subquery()
)
REFRESH = update(events).where(events.c.id == _OF_DELIVERY).values(state=SUMMED_UP)
REFRESH_SQLITE = sqlite_sql(REFRESH)
# The states it names are parameters of that SQL too: their values, once.
_REFRESH_CONSTANTS = REFRESH.compile(dialect=sqlite.dialect(paramstyle="named")).params


def initial_state(delivery_count: int) -> str:
    """A new event's state: its deliveries are all pending, or it has none."""
    return (EventState.PENDING if delivery_count else EventState.IGNORED).value


def refresh_state(conn: Connection, delivery_id: str) -> None:
    """Sum up again the state of the event ``delivery_id`` belongs to (its state has just
    changed, in this transaction). On SQLite straight on the driver's cursor, as the
    attempt's own statements are (:mod:`app.storage.store`)."""
    if conn.dialect.name == "sqlite":
        driver = conn.connection.driver_connection
        assert driver is not None
        driver.execute(REFRESH_SQLITE, _REFRESH_CONSTANTS | {"b_delivery_id": delivery_id})
        return
    conn.execute(REFRESH, {"b_delivery_id": delivery_id})


FILL_BATCH = 20_000


def fill_states(conn: Connection) -> int:
    """Set every stored event's state from its deliveries (the upgrade to schema 4), in
    batches of ``FILL_BATCH`` events in id order, so no statement holds a million rows'
    work; the number of events filled."""
    filled, after = 0, ""
    while True:
        ids = (
            conn.execute(
                select(events.c.id)
                .where(events.c.id > after)
                .order_by(events.c.id)
                .limit(FILL_BATCH)
            )
            .scalars()
            .all()
        )
        if not ids:
            return filled
        conn.execute(
            update(events)
            .where(events.c.id >= ids[0], events.c.id <= ids[-1])
            .values(state=SUMMED_UP)
        )
        filled += len(ids)
        after = ids[-1]

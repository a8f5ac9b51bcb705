"""What is kept, durably: the typed records, the schema and its upgrades, the database
(SQLite or PostgreSQL, one transaction per operation), the store's writes along an
event's path, and history, what operators read and replay."""

from app.storage.database import Database, display_url
from app.storage.history import History, nothing_to_replay
from app.storage.records import (
    DeliveryRecord,
    DeliveryState,
    EventRecord,
    EventState,
    NewDelivery,
    NewEvent,
    Recorded,
)
from app.storage.store import Store

__all__ = [
    "Database",
    "DeliveryRecord",
    "DeliveryState",
    "EventRecord",
    "EventState",
    "History",
    "NewDelivery",
    "NewEvent",
    "Recorded",
    "Store",
    "display_url",
    "nothing_to_replay",
]

"""The store's settings: all that the commands which only read or replay the store
(``events``, ``replay``) need, so they run without the service's tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from annotated_types import Ge
from pydantic import (
    Field,
    field_validator,
)

from app.config.base import Durability, Duration, PublicSettings
from app.config.values import (
    database_kind,
    parse_duration,
)


class StoreSettings(PublicSettings):
    """Where events are stored, and how the service logs: all that the commands which
    only read or replay the store (``events``, ``replay``) need."""

    log_format: Literal["auto", "json", "console"] = Field(
        "auto", validation_alias="BRIDGE_LOG_FORMAT"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias="BRIDGE_LOG_LEVEL"
    )

    database_url: str = Field("sqlite:///./data/bridge.db", validation_alias="BRIDGE_DATABASE_URL")
    durability: Durability = Field(Durability.CRASH, validation_alias="BRIDGE_DURABILITY")
    retention: Duration = Field(timedelta(days=30), validation_alias="BRIDGE_RETENTION")
    db_lock_timeout: Duration = Field(
        timedelta(seconds=5), validation_alias="BRIDGE_DB_LOCK_TIMEOUT"
    )
    # How long an operator's read (admin API, console, CLI, gauges) may run before it is
    # stopped and answered 503 query_timeout.
    db_read_timeout: Duration = Field(
        timedelta(seconds=5), validation_alias="BRIDGE_DB_READ_TIMEOUT"
    )
    db_pool_size: Annotated[int, Ge(1)] = Field(5, validation_alias="BRIDGE_DB_POOL_SIZE")
    db_pool_timeout: Duration = Field(
        timedelta(seconds=10), validation_alias="BRIDGE_DB_POOL_TIMEOUT"
    )

    @field_validator(
        "retention", "db_lock_timeout", "db_read_timeout", "db_pool_timeout", mode="before"
    )
    @classmethod
    def _store_durations(cls, value: Any) -> Any:
        return parse_duration(value)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        value = value.strip()
        if database_kind(value) is None:
            raise ValueError(
                "must be a sqlite:/// URL (for example "
                "sqlite:///./data/bridge.db) or a postgresql:// URL (for example "
                "postgresql://bridge:<password>@db:5432/bridge)"
            )
        return value

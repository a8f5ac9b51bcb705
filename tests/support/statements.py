"""The SQL statements a piece of work runs, as the driver gets them: what a test of a
query's plan explains, and what a test of a view's cost counts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from app.storage.database import Database

Statement = tuple[str, Any]


@contextmanager
def listening(engines: list[Any], keep: Any) -> Iterator[None]:
    """``keep(statement, parameters)`` for every statement run on ``engines`` (engines,
    async engines, or the class :class:`Engine` for every engine of the process)."""

    def before(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        keep(statement, parameters)

    targets = [getattr(engine, "sync_engine", engine) for engine in engines]
    for target in targets:
        event.listen(target, "before_cursor_execute", before)
    try:
        yield
    finally:
        for target in targets:
            event.remove(target, "before_cursor_execute", before)


@contextmanager
def captured(database: Database) -> Iterator[list[Statement]]:
    """The SELECTs (and DELETEs) run on the store's engines meanwhile, with their
    parameters as the driver got them."""
    found: list[Statement] = []
    engines = [database.engine, *([database.reads.engine] if database.reads else [])]

    def keep(statement: str, parameters: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "DELETE")):
            found.append((statement, parameters))

    with listening(engines, keep):
        yield found


@contextmanager
def reading(table: str) -> Iterator[list[str]]:
    """The statements that read ``table``, run meanwhile on any engine of this process
    (the app's in-process, the CLI's own)."""
    found: list[str] = []

    def keep(statement: str, _parameters: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and f"FROM {table}" in statement:
            found.append(statement)

    with listening([Engine], keep):
        yield found

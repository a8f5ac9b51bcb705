"""Connections the HTTP server turned away or cut off at one of its limits, counted by
reason for ``/metrics`` and logged sparingly (app.server.connections counts, app.metrics reads).

Counted for the whole process, as its log lines lost are (:data:`app.logs.lost_lines`):
the server is the process's, and no request is there to carry them to a service's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog

log = structlog.get_logger("erathos_prefect_bridge.server.refusals")

LOG_EVERY = 10.0  # seconds: at most one line per kind of refusal, saying how many it covers


class Refusal(StrEnum):
    """Why a connection was refused or closed by the server rather than by its client."""

    TOO_MANY = "too_many"  # BRIDGE_MAX_CONNECTIONS open already: answered 503
    HEAD_TOO_LARGE = "head_too_large"  # over BRIDGE_MAX_HEADER_BYTES: answered 431
    HEAD_TOO_SLOW = "head_too_slow"  # not whole within BRIDGE_HEADER_TIMEOUT
    BODY_TOO_SLOW = "body_too_slow"  # not whole within BRIDGE_BODY_TIMEOUT
    IDLE = "idle"  # no next request within BRIDGE_KEEPALIVE_TIMEOUT of an answer
    ANSWER_UNREAD = "answer_unread"  # answers not taken within BRIDGE_BODY_TIMEOUT


class Refusals:
    """How many connections were refused or closed, by :class:`Refusal`."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(Refusal, 0)

    def count(self, reason: Refusal) -> None:
        self.counts[reason] += 1


refusals = Refusals()


@dataclass
class Tally:
    """Refusals of one kind, counted for ``/metrics`` and, when ``event`` names them,
    logged at most every LOG_EVERY seconds: a flood of hostile connections must not
    become a flood of log lines."""

    reason: Refusal
    event: str | None
    logged_at: float = field(default=-LOG_EVERY)
    unlogged: int = 0

    def count(self, now: float, **fields: Any) -> None:
        refusals.count(self.reason)
        if self.event is None:
            return
        self.unlogged += 1
        if now - self.logged_at >= LOG_EVERY:
            log.warning(self.event, connections=self.unlogged, **fields)
            self.logged_at, self.unlogged = now, 0

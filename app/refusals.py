"""Connections the HTTP server turned away or cut off at one of its limits, counted by
reason for ``/metrics`` (app.server counts, app.metrics reads).

Counted for the whole process, as its log lines lost are (:data:`app.logs.lost_lines`):
the server is the process's, and no request is there to carry them to a service's state.
"""

from __future__ import annotations

from enum import StrEnum


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

"""What the rest of the service may know of delivery: a typed snapshot of each connection
(its circuit, window and requests in flight), and the observer delivery reports attempts
to. Readers (the console, health, metrics, the lifespan) take these, never a gate's own
fields, so the gate can change how it admits without breaking them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from app.delivery.client import AttemptResult
from app.delivery.gate import Circuit, ConnectionGate

# A delivery's kind, as metrics label it: a flow run, or a Prefect event.
FLOW_RUN, EVENT = "flow_run", "event"


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """One Prefect connection's admission, at the moment it was read."""

    name: str
    circuit: Circuit
    window: int  # the concurrency level the gate admits now
    in_flight: int

    @classmethod
    def of(cls, name: str, gate: ConnectionGate) -> ConnectionStatus:
        return cls(name, gate.circuit, gate.limit, gate.in_flight)


class DeliveryObserver(Protocol):
    """Told of every attempt and of every delivery's final state (the metrics are one);
    called in line, so it must be cheap and must not raise."""

    def attempted(self, connection: str, kind: str, result: AttemptResult, *, sent: bool) -> None:
        """One attempt of a delivery of ``kind`` (FLOW_RUN, EVENT)."""

    def finished(
        self, connection: str, kind: str, result: AttemptResult, *, state: str, waited: float
    ) -> None:
        """A delivery reached its final state, ``waited`` seconds after it became due."""


class RunObserver(Protocol):
    """Told what following flow runs finds (the metrics are one); called in line, so it
    must be cheap and must not raise."""

    def follow_asked(self, connection: str, status: str) -> None:
        """One request to a connection for its runs' states, by its answer's class."""

    def run_finished(
        self, route: str, state: str, *, from_finish: float | None, from_receipt: float | None
    ) -> None:
        """A run's state became final (``gone`` included), with its freshness if it ended."""

"""Getting each delivery into Prefect: the dispatcher (claims, leases, retries, dead
letters), one delivery's turn, each connection's gate (concurrency, rate, circuit), the
Prefect client, probes of Prefect and targets, the read-back of emitted events, and the
typed status snapshot the rest of the service reads instead of the gates."""

from app.delivery.client import AttemptResult, Outcome, PrefectConnection
from app.delivery.dispatcher import Dispatcher
from app.delivery.probe import PrefectWatch
from app.delivery.status import EVENT, FLOW_RUN, ConnectionStatus, DeliveryObserver

__all__ = [
    "EVENT",
    "FLOW_RUN",
    "AttemptResult",
    "ConnectionStatus",
    "DeliveryObserver",
    "Dispatcher",
    "Outcome",
    "PrefectConnection",
    "PrefectWatch",
]

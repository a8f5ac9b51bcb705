"""Prometheus metrics: what arrived, what Prefect made of it, how deep the retry queue is,
and what the process turned away or lost (connections, log lines).

One :class:`Metrics` per running service, with its own ``CollectorRegistry`` (never the
process-global one), fed by the webhook and the dispatcher and read by ``GET /metrics``;
the process's own counts (app.server.refusals, app.logs) are read at each scrape. Every label
is bounded: reasons, status classes, outcomes and the configured connection names.
Never an execution id, a table name or anything secret.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from app import __version__
from app.delivery.client import AttemptResult, Outcome
from app.delivery.deadlines import window_outcome
from app.delivery.gate import Circuit
from app.delivery.status import EVENT, FLOW_RUN, ConnectionStatus
from app.logs import lost_lines
from app.server.refusals import refusals
from app.storage.history import History
from app.storage.runs import FRESHNESS_BUCKETS, FROM_FINISH, FROM_RECEIPT, Runs
from app.storage.sets import Closed

PREFIX = "erathos_bridge"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# The error codes of app.errors that reject a webhook request, and their reason label.
REJECTED_BY_CODE = {
    "unauthorized": "auth",
    "payload_too_large": "size",
    "unsupported_media_type": "media_type",
    "invalid_json": "invalid_json",
    "validation_failed": "validation",
    "store_unavailable": "store_unavailable",
    "rate_limited": "rate_limited",
    "request_timeout": "body_timeout",
    "forbidden": "forbidden",
    "target_unverifiable": "target_unverifiable",
}
DUPLICATE, NO_ROUTE = "duplicate", "no_route"
REJECTION_REASONS = (*REJECTED_BY_CODE.values(), DUPLICATE, NO_ROUTE)
# 401, 403 and 429 stand apart from their class: each calls for a different action.
STATUS_CLASSES = ("2xx", "3xx", "401", "403", "429", "4xx", "5xx", "timeout", "error")
DEAD_REASONS = ("permanent", "exhausted")  # Prefect refused; the retry budget ran out
FINAL_OUTCOMES = ("delivered", "dead")
SET_OUTCOMES = ("completed", "late_run", "late_skipped")  # app.delivery.deadlines
# The ``kind`` of a delivery: a flow run to create, or an Erathos event emitted as a
# Prefect event (only on the connections that emit them).

QUEUE_CACHE_SECONDS = 5.0  # the pending-deliveries query runs at most this often
PREFECT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0)


def status_class(result: AttemptResult) -> str:
    """The ``status`` label of one attempt: the answer's class, or why there was none."""
    code = result.status_code
    if code is None:
        return "timeout" if result.timed_out else "error"
    if code in (401, 403, 429):
        return str(code)
    return f"{min(max(code // 100, 2), 5)}xx"


class WithoutCreated:
    """A registry as scraped, less the ``<name>_created`` sample prometheus_client adds to
    every counter and histogram series (a second series per series, of a process-start
    time nobody alerts on).

    Filtered here, for this registry alone: ``prometheus_client.disable_created_metrics()``
    and ``PROMETHEUS_DISABLE_CREATED_SERIES`` flip one module-wide flag, which would change
    every other registry of the process (a host application's, another app's in tests) and
    depend on when it is called."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            created = f"{family.name}_created"
            # Every collect() builds new Metric objects: filtering them changes nothing kept.
            family.samples = [sample for sample in family.samples if sample.name != created]
            yield family


class ProcessLosses:
    """What the process turned away or lost, read from its own counts at each scrape:
    connections the HTTP server refused or closed at a limit, by reason, and log lines
    the log's sink refused. Counted where it happens, outside any request, for the
    whole process (see app.server.refusals)."""

    def collect(self) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            f"{PREFIX}_connections_refused",
            "Connections the HTTP server refused or closed at one of its limits, by reason: "
            "too_many (503), head_too_large (431), head_too_slow, body_too_slow, idle "
            "(kept alive past BRIDGE_KEEPALIVE_TIMEOUT with no next request), answer_unread "
            "(answers the client did not read within BRIDGE_BODY_TIMEOUT)",
            labels=["reason"],
        )
        for reason, count in refusals.counts.items():
            refused.add_metric([reason.value], count)
        yield refused
        yield CounterMetricFamily(
            f"{PREFIX}_log_lines_lost",
            "Log lines the log's sink refused (stderr closed, a broken pipe)",
            value=lost_lines.count,
        )


class Metrics:
    """The service's counters, gauges and histograms, and how they are updated."""

    def __init__(
        self,
        connections: Iterable[str] = (),
        events_on: Iterable[str] = (),
        sets: Iterable[str] = (),
    ) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self._scraped = WithoutCreated(registry)
        registry.register(ProcessLosses())
        self.received = Counter(
            f"{PREFIX}_events_received",
            "Webhook requests (Erathos and Prefect-shaped), whatever became of them",
            registry=registry,
        )
        self.accepted = Counter(
            f"{PREFIX}_events_accepted",
            "Events stored with at least one delivery to make",
            registry=registry,
        )
        self.rejected = Counter(
            f"{PREFIX}_events_rejected",
            "Webhook requests that made no new delivery, by reason "
            "(duplicate and no_route were acknowledged and recorded)",
            ["reason"],
            registry=registry,
        )
        self.deliveries = Counter(
            f"{PREFIX}_deliveries",
            "Deliveries finished, by kind (flow_run, event) and final outcome "
            "(delivered: the flow run exists, or Prefect took the event; dead)",
            ["connection", "kind", "outcome"],
            registry=registry,
        )
        self.attempts = Counter(
            f"{PREFIX}_delivery_attempts",
            "Attempts to create a flow run or emit an event (kind), by Prefect's answer "
            "(2xx, 3xx, 401, 403, 429, 4xx, 5xx) or its absence (timeout, error)",
            ["connection", "kind", "status"],
            registry=registry,
        )
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters",
            "Deliveries dead-lettered, by kind (flow_run, event): refused for good "
            "(permanent) or out of retries (exhausted)",
            ["connection", "kind", "reason"],
            registry=registry,
        )
        self.pending = Gauge(
            f"{PREFIX}_deliveries_pending",
            "Deliveries waiting for a flow run or to emit an event (due, retrying, or in flight)",
            ["connection"],
            registry=registry,
        )
        self.oldest_pending = Gauge(
            f"{PREFIX}_oldest_pending_age_seconds",
            "Age of the oldest pending delivery (since its event arrived, or its replay); "
            "0 when none",
            ["connection"],
            registry=registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_event_to_flow_run_seconds",
            "From an event's receipt (or its replay) to its flow run's creation",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.prefect_duration = Histogram(
            f"{PREFIX}_prefect_request_duration_seconds",
            "Requests to create a flow run or emit an event (kind), by connection and "
            "outcome (delivered, transient, permanent)",
            ["connection", "kind", "outcome"],
            buckets=PREFECT_BUCKETS,
            registry=registry,
        )
        self.window = Gauge(
            f"{PREFIX}_concurrency_window",
            "Requests the adaptive window lets be in flight to the connection now",
            ["connection"],
            registry=registry,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_prefect_requests_in_flight",
            "Requests in flight to the connection now",
            ["connection"],
            registry=registry,
        )
        self.circuit = Gauge(
            f"{PREFIX}_circuit_state",
            "1 for the connection's current circuit state (closed, open, half-open), else 0",
            ["connection", "state"],
            registry=registry,
        )
        self.set_windows = Counter(
            f"{PREFIX}_set_windows",
            "Windows of the routes file's sets closed, by set and outcome (completed; "
            "late_run: late, run with what arrived; late_skipped: late, no run)",
            ["set", "outcome"],
            registry=registry,
        )
        self.follow_requests = Counter(
            f"{PREFIX}_follow_requests",
            "Requests to Prefect for the state of followed flow runs (one per connection "
            "per BRIDGE_FOLLOW_INTERVAL at most), by answer (2xx, 4xx, 5xx, error)",
            ["connection", "status"],
            registry=registry,
        )
        self.runs_finished = Counter(
            f"{PREFIX}_runs_finished",
            "Flow runs followed to a final state (completed, failed, crashed, cancelled, "
            "or gone: deleted in Prefect), by route",
            ["route", "state"],
            registry=registry,
        )
        self.freshness = Histogram(
            f"{PREFIX}_run_freshness_seconds",
            "From a table landing to its flow run's end, by route: from Erathos's finish "
            "time (basis finish) or from the webhook's receipt (basis receipt)",
            ["route", "basis"],
            buckets=FRESHNESS_BUCKETS,
            registry=registry,
        )
        self.followed = Gauge(
            f"{PREFIX}_runs_followed",
            "Flow runs still followed (not final yet, within BRIDGE_FOLLOW_FOR)",
            ["connection"],
            registry=registry,
        )
        Gauge(f"{PREFIX}_build_info", "The running version", ["version"], registry=registry).labels(
            __version__
        ).set(1)
        self._connections = list(connections)
        self._queue_read_at: float | None = None
        # Every series exists from the start at 0, so increase() sees the first event.
        for reason in REJECTION_REASONS:
            self.rejected.labels(reason)
        for name in sets:
            for outcome in SET_OUTCOMES:
                self.set_windows.labels(name, outcome)
        emitting = set(events_on)
        for name in self._connections:
            for kind in (FLOW_RUN, EVENT) if name in emitting else (FLOW_RUN,):
                for outcome in FINAL_OUTCOMES:
                    self.deliveries.labels(name, kind, outcome)
                for status in STATUS_CLASSES:
                    self.attempts.labels(name, kind, status)
                for reason in DEAD_REASONS:
                    self.dead_letters.labels(name, kind, reason)
            self.pending.labels(name).set(0)
            self.followed.labels(name).set(0)
            self.oldest_pending.labels(name).set(0)
            self._set_circuit(name, Circuit.CLOSED)

    # -- ingest -------------------------------------------------------------------------

    def set_closed(self, closed: Closed) -> None:
        """Count a set's window that closed (a late one's line is logged beside it)."""
        self.set_windows.labels(closed.set_name, window_outcome(closed)).inc()

    def reject(self, reason_or_code: str) -> None:
        """Count a rejected request, by reason or by the error code it was answered with."""
        self.rejected.labels(REJECTED_BY_CODE.get(reason_or_code, reason_or_code)).inc()

    # -- delivery -----------------------------------------------------------------------

    def attempted(self, connection: str, kind: str, result: AttemptResult, *, sent: bool) -> None:
        """One attempt of a delivery of ``kind`` (FLOW_RUN, EVENT); ``sent`` when a request
        went to Prefect (not a configuration error, nor an event refused as too large)."""
        self.attempts.labels(connection, kind, status_class(result)).inc()
        if sent:
            self.prefect_duration.labels(connection, kind, result.outcome.value).observe(
                result.duration_ms / 1000
            )

    def finished(
        self, connection: str, kind: str, result: AttemptResult, *, state: str, waited: float
    ) -> None:
        """A delivery reached its final state; ``waited`` is how long since it became due
        (observed for flow runs only: the histogram is the time to a flow run)."""
        self.deliveries.labels(connection, kind, state).inc()
        if state == "delivered":
            if kind == FLOW_RUN:
                self.latency.observe(max(0.0, waited))
        else:
            permanent = result.outcome is Outcome.PERMANENT
            reason = "permanent" if permanent else "exhausted"
            self.dead_letters.labels(connection, kind, reason).inc()

    # -- following flow runs -------------------------------------------------------------

    def follow_asked(self, connection: str, status: str) -> None:
        self.follow_requests.labels(connection, status).inc()

    def run_finished(
        self, route: str, state: str, *, from_finish: float | None, from_receipt: float | None
    ) -> None:
        self.runs_finished.labels(route, state).inc()
        for basis, seconds in ((FROM_FINISH, from_finish), (FROM_RECEIPT, from_receipt)):
            if seconds is not None:
                self.freshness.labels(route, basis).observe(seconds)

    # -- scrape -------------------------------------------------------------------------

    async def refresh(
        self,
        history: History,
        connections: Iterable[ConnectionStatus],
        runs: Runs | None = None,
    ) -> None:
        """Bring the gauges up to date: the gates at every scrape, the queue and the runs
        followed (one indexed query each) at most every QUEUE_CACHE_SECONDS."""
        for status in connections:
            self.window.labels(status.name).set(status.window)
            self.in_flight.labels(status.name).set(status.in_flight)
            self._set_circuit(status.name, status.circuit)
        now = time.monotonic()
        if self._queue_read_at is not None and now - self._queue_read_at < QUEUE_CACHE_SECONDS:
            return
        summary = await history.pending_summary()
        self._queue_read_at = now
        wall = time.time()
        for name in {*self._connections, *summary}:
            count, oldest = summary.get(name, (0, None))
            self.pending.labels(name).set(count)
            self.oldest_pending.labels(name).set(max(0.0, wall - oldest) if oldest else 0)
        if runs is not None:
            followed = await runs.followed()
            for name in {*self._connections, *followed}:
                self.followed.labels(name).set(followed.get(name, 0))

    def exposition(self) -> bytes:
        return generate_latest(self._scraped)

    def _set_circuit(self, connection: str, current: Circuit) -> None:
        for state in Circuit:
            self.circuit.labels(connection, state.value).set(1 if state is current else 0)

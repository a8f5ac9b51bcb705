"""The bench's targets, and its table: the phases' raw figures (``Harness.data``) as rows
judged against the targets, and how much the machine's other load got in the way."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bench.stats import percentile


@dataclass(frozen=True)
class Target:
    figure: str  # the key the row functions below judge a figure by
    text: str  # the table's target column
    met: Callable[..., bool]  # given the figure's values, in the order its row passes them


# Printed as pass/MISS, never asserted. A row also misses when its run is incomplete (an
# event lost, duplicated or refused), whatever its figure.
TARGETS = (
    Target("wrk_over_ceiling", ">= 2 x ceiling", lambda ratio: ratio >= 2),
    Target("durable_accept_over_ceiling", ">= 0.5 x", lambda ratio: ratio >= 0.5),
    Target("accept_p99_ms_at_500", "p99 <= 20 ms", lambda p99: p99 <= 20),
    Target("end_to_end_ms", "p50 <= 10, p99 <= 50 ms", lambda p50, p99: p50 <= 10 and p99 <= 50),
    Target("create_via_service_over_direct", "<= 1.10 x", lambda ratio: ratio <= 1.10),
    Target(
        "capped_drain",
        "<= cap (1 s: <= cap + 1)",
        lambda mean, busiest_second, cap: mean <= cap and busiest_second <= cap + 1,
    ),
    Target("peak_rss_mb", "<= 120 MB", lambda mb: mb <= 120),
    Target("start_to_ready_s", "<= 2 s", lambda slowest: slowest <= 2),
    Target("drain_over_prefect_best", ">= 0.9 x", lambda ratio: ratio >= 0.9),
    Target("first_run_after_health_s", "<= 10 s", lambda seconds: seconds <= 10),
    # A second replica must add acceptance, not contention. Its drain is information:
    # Prefect's own pace bounds it, and 8 judges that against Prefect's best.
    Target("two_replicas_accept_over_one", "> 1.0 x", lambda ratio: ratio > 1.0),
)
DATABASES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
_TARGET = {target.figure: target for target in TARGETS}


def judged(figure: str, *values: float, complete: bool = True) -> tuple[str, bool]:
    """The target's text, and whether the values meet it."""
    target = _TARGET[figure]
    return target.text, complete and target.met(*values)


@dataclass(frozen=True)
class Row:
    number: str
    figure: str
    measured: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    ok: bool | None = None  # None: information only

    @property
    def result(self) -> str:
        return {True: "pass", False: "MISS", None: ""}[self.ok]


def rows(data: dict[str, Any]) -> list[Row]:
    """The table, in its order, for whichever phases produced their figures."""
    from bench.scale_report import rows as scale_rows  # it builds on this module's Row

    return [
        *_load_generator(data),
        *_ceiling_and_ingest(data),
        *_accept_latency(data),
        *_end_to_end(data),
        *_overhead(data),
        *_drains(data),
        *_memory_and_start(data),
        *_prefect_drains(data),
        *_replicas(data),
        *scale_rows(data),
    ]


def _ceiling_rps(d: dict[str, Any]) -> float:
    return _mean(r["ceiling"]["rps"] for r in d.get("ingest_rounds", []))


def _load_generator(d: dict[str, Any]) -> list[Row]:
    if "wrk_ceiling" not in d:
        return []
    rps, ceiling = d["wrk_ceiling"]["rps"], _ceiling_rps(d)
    return [
        Row(
            "0",
            "load generator's own ceiling: wrk + Lua bodies -> asyncio sink",
            f"{fmt(rps)} req/s",
            f"stack ceiling {fmt(ceiling)} req/s",
            f"{rps / ceiling:.1f} x",
            *judged("wrk_over_ceiling", rps / ceiling),
        )
    ]


def _ceiling_and_ingest(d: dict[str, Any]) -> list[Row]:
    if "ingest_rounds" not in d:
        return []
    rounds, ceiling = d["ingest_rounds"], _ceiling_rps(d)
    accept = _mean(r["accept"]["rps"] for r in rounds)
    crash = _mean(r["crash"]["rps"] for r in rounds)
    power = _mean(r["power"]["rps"] for r in rounds)
    wrk_cores = max(r[k]["wrk_cores"] for r in rounds for k in ("ceiling", "accept", "crash"))
    ceiling_cpu = _cpu_ms(rounds, "ceiling")
    accept_cpu, crash_cpu = _cpu_ms(rounds, "accept"), _cpu_ms(rounds, "crash")
    delivered = _mean(r["crash"]["delivered_in_window_per_s"] for r in rounds)
    # No request refused; every accepted event stored and still queued (a few more than
    # wrk counted: it stops with requests in flight that the service went on to store).
    complete = all(
        r["accept"]["errors"] == 0
        and set(r["accept"]["deliveries"]) <= {"pending"}
        and r["accept"]["deliveries"].get("pending", 0) >= r["accept"]["accepted"]
        for r in rounds
    )
    return [
        Row(
            "1",
            "ceiling: bare FastAPI, same uvicorn, parse JSON, 202",
            f"{fmt(ceiling)} req/s",
            f"wrk used <= {wrk_cores:.2f} core",
        ),
        Row(
            "2",
            "durable accept: Prefect down, every event stored and queued",
            f"{fmt(accept)} ev/s",
            f"ceiling {fmt(ceiling)} req/s",
            f"{accept / ceiling:.2f} x",
            *judged("durable_accept_over_ceiling", accept / ceiling, complete=complete),
        ),
        Row(
            "2",
            "  CPU per accepted event vs ceiling per request",
            f"{accept_cpu:.2f} ms",
            f"ceiling {ceiling_cpu:.2f} ms",
            f"{accept_cpu / ceiling_cpu:.1f} x",
        ),
        Row(
            "2",
            "ingest delivering to the fake Prefect, DURABILITY=crash",
            f"{fmt(crash)} ev/s",
            f"ceiling {fmt(ceiling)} req/s",
            f"{crash / ceiling:.2f} x",
        ),
        Row(
            "2",
            "ingest delivering to the fake Prefect, DURABILITY=power",
            f"{fmt(power)} ev/s",
            f"ceiling {fmt(ceiling)} req/s",
            f"{power / ceiling:.2f} x",
        ),
        Row(
            "2",
            "  CPU per event (crash, with its deliveries) vs ceiling",
            f"{crash_cpu:.2f} ms",
            f"ceiling {ceiling_cpu:.2f} ms",
            f"{crash_cpu / ceiling_cpu:.1f} x",
        ),
        Row("2", "  delivered to fake Prefect during the crash window", f"{fmt(delivered)} /s"),
    ]


def _accept_latency(d: dict[str, Any]) -> list[Row]:
    if "latency" not in d:
        return []
    table = []
    for rate in ("200", "500"):
        x = d["latency"][rate]
        verdict: tuple[str, bool | None] = ("", None)  # 200/s is the baseline's load
        if rate == "500":
            verdict = judged(
                "accept_p99_ms_at_500", x["accept_ms"]["p99"], complete=x["non_2xx"] == 0
            )
        table.append(
            Row(
                "3",
                f"accept latency at {rate} ev/s open loop (p50 / p99)",
                f"{x['accept_ms']['p50']:.1f} / {x['accept_ms']['p99']:.1f} ms",
                f"sent {fmt(x['sent_rate'], 1)}/s, lag p99 "
                f"{x['schedule_lag_ms']['p99']:.2f} ms{_failures(x)}",
                "",
                *verdict,
            )
        )
    return table


def _failures(x: dict[str, Any]) -> str:
    """Why some requests were not accepted, as a suffix of the baseline column."""
    failed = ""
    if x["not_sent"]:
        failed += f", {x['not_sent']} not sent (1,000 unanswered)"
    if x["loadgen_errors"]:
        failed += ", failed: " + ", ".join(f"{n} {name}" for name, n in x["loadgen_errors"].items())
    if other := x["non_2xx"] - x["not_sent"] - sum(x["loadgen_errors"].values()):
        failed += f", {other} answered non-2xx"
    return failed


def _end_to_end(d: dict[str, Any]) -> list[Row]:
    if "latency" not in d:
        return []
    at_200 = d["latency"]["200"]
    e2e = at_200["e2e_ms"]
    return [
        Row(
            "4",
            "end to end at 200 ev/s: POST -> fake Prefect (p50 / p99)",
            f"{e2e['p50']:.1f} / {e2e['p99']:.1f} ms",
            f"{at_200['delivered']} of {at_200['requests']} matched",
            "",
            *judged("end_to_end_ms", e2e["p50"], e2e["p99"]),
        )
    ]


def _overhead(d: dict[str, Any]) -> list[Row]:
    if "overhead" not in d:
        return []
    o = d["overhead"]
    return [
        Row(
            "5",
            "a create via the service, Prefect on SQLite (median)",
            f"{o['via_service_ms']['p50']:.1f} ms",
            f"direct {o['direct_ms']['p50']:.1f} ms",
            f"{o['ratio_p50']:.2f} x",
            *judged("create_via_service_over_direct", o["ratio_p50"]),
        ),
        Row(
            "5",
            "  the same create direct through httpx, the service's client",
            f"{o['httpx_ms']['p50']:.1f} ms",
            f"direct {o['direct_ms']['p50']:.1f} ms",
            f"{o['httpx_ratio_p50']:.2f} x",
        ),
    ]


def _drains(d: dict[str, Any]) -> list[Row]:
    table = []
    if "drain" in d:
        x = d["drain"]
        failed = "" if x["delivered"] == x["backlog"] else f", {x['delivered']} delivered"
        table.append(
            Row(
                "6",
                f"drain {fmt(x['backlog'])} to the fake Prefect after an outage",
                f"{fmt(x['rate'])} deliveries/s",
                f"first after up {x['first_after_up_s']:.1f} s{failed}",
            )
        )
    if "drain_capped" in d:
        x = d["drain_capped"]
        cap = x["settings"]["max_rate"]
        table.append(
            Row(
                "6",
                f"drain {fmt(x['backlog'])}, BRIDGE_MAX_RATE={cap}: sent mean / most in 1 s",
                f"{x['sent_rate']:.1f} / {x['sent_max_in_1s']} per s",
                f"arrived {x['rate']:.1f} / {x['max_in_1s']} per s",
                "",
                *judged("capped_drain", x["sent_rate"], x["sent_max_in_1s"], float(cap)),
            )
        )
    return table


def _memory_and_start(d: dict[str, Any]) -> list[Row]:
    table = []
    peaks = [
        r[k]["peak_rss_mb"]
        for r in d.get("ingest_rounds", [])
        for k in ("accept", "crash", "power")
    ]
    peaks += [d[k]["peak_rss_mb"] for k in ("drain", "drain_capped") if k in d]
    if peaks:
        idle = d.get("ready", {}).get("hwm_mb_at_ready", [])
        table.append(
            Row(
                "7",
                "peak RSS of the service during 2 and 6",
                f"{max(peaks):.0f} MB",
                f"at ready {percentile(idle, 50):.0f} MB" if idle else "",
                "",
                *judged("peak_rss_mb", max(peaks)),
            )
        )
    if "ready" in d:
        t = d["ready"]["seconds"]
        table.append(
            Row(
                "7",
                f"start -> /readyz 200 (median / max of {len(t)})",
                f"{percentile(t, 50):.2f} / {max(t):.2f} s",
                "",
                "",
                *judged("start_to_ready_s", max(t)),
            )
        )
    return table


def _prefect_drains(d: dict[str, Any]) -> list[Row]:
    table = []
    for database, x in d.get("prefect_drains", {}).items():
        name = DATABASES[database]
        complete = x["flow_runs"] == x["backlog"] == x["distinct_keys"]
        attempts = x["attempts"]
        rates = x["direct_rates"]
        clients = list(rates)
        # Per 100 flow runs created, before and after the drain together.
        busy = [
            100
            * (x["direct_before"][n]["busy_503"] + x["direct_after"][n]["busy_503"])
            / (2 * x["direct_creates"])
            for n in clients
        ]
        table += [
            Row(
                "8",
                f"backlog of {fmt(x['backlog'])} drained into Prefect on {name}",
                f"{x['drain_rate']:.1f} runs/s",
                f"Prefect's best {x['best_rate']:.1f} runs/s ({_clients(x['best_clients'])})",
                f"{x['ratio']:.2f} x",
                *judged("drain_over_prefect_best", x["ratio"], complete=complete),
            ),
            Row(
                "8",
                f"  Prefect on {name}, direct, {' / '.join(map(str, clients))} clients",
                " / ".join(f"{rates[n]:.0f}" for n in clients) + " runs/s",
                "503s per 100 runs: " + " / ".join(f"{b:.0f}" for b in busy),
            ),
            Row(
                "8",
                "  503s during the drain, per 100 flow runs created",
                f"{x['busy_per_100_creates']:.1f}",
                f"{attempts.get('503', 0)} of {sum(attempts.values())} attempts",
            ),
            Row(
                "8",
                "  Prefect restarted: health answered -> first flow run",
                f"{x['first_delivery_after_health_s']:.1f} s",
                "",
                "",
                *judged("first_run_after_health_s", x["first_delivery_after_health_s"]),
            ),
        ]
    return table


def _replicas(d: dict[str, Any]) -> list[Row]:
    runs = d.get("replicas", {})
    if not (runs.get("1") and runs.get("2")):
        return []
    complete = all(
        x["flow_runs"] == x["backlog"] == x["distinct_keys"]
        and set(x["accept_statuses"]) <= {"200", "202"}
        for x in (*runs["1"], *runs["2"])
    )
    one_accept, two_accept = (_mean(x["accept_rate"] for x in runs[n]) for n in ("1", "2"))
    one_drain, two_drain = (_mean(x["drain_rate"] for x in runs[n]) for n in ("1", "2"))
    accept, drain = two_accept / one_accept, two_drain / one_drain
    backlog = runs["2"][0]["backlog"]
    best = d.get("prefect_drains", {}).get("postgresql", {}).get("best_rate")
    prefect_best = f"; Prefect's best {best:.1f}" if best else ""
    return [
        Row(
            "9",
            "two replicas, one PostgreSQL store: accept (Prefect down)",
            f"{fmt(two_accept)} ev/s",
            f"one replica {fmt(one_accept)} ev/s",
            f"{accept:.2f} x",
            *judged("two_replicas_accept_over_one", accept, complete=complete),
        ),
        Row(
            "9",
            f"two replicas: drain {fmt(backlog)} into Prefect on PostgreSQL",
            f"{two_drain:.1f} runs/s",
            f"one replica {one_drain:.1f}{prefect_best}",
            f"{drain:.2f} x",
        ),
    ]


def _clients(n: int) -> str:
    return "sequential" if n == 1 else f"{n} clients"


def render(table: list[Row]) -> str:
    header = Row("#", "figure", "measured", "baseline (same run)", "ratio", "target", None)
    cells = [
        [r.number, r.figure, r.measured, r.baseline, r.ratio, r.target, r.result]
        for r in (header, *table)
    ]
    cells[0][-1] = "result"
    widths = [max(len(c[i]) for c in cells) for i in range(7)]
    lines = []
    for i, c in enumerate(cells):
        lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def contention(data: dict[str, Any], load: dict[str, dict[str, float]]) -> str:
    """How much the machine's other load got in the way: the service's share of wall
    time on a CPU and waiting for one, and how busy all cores were per phase."""
    parts = []
    last_round = data.get("ingest_rounds", [{}])[-1]
    for label, x in (
        ("accept", last_round.get("accept")),
        ("ingest", last_round.get("crash")),
        ("500 ev/s", data.get("latency", {}).get("500")),
        ("drain", data.get("drain")),
    ):
        if x and "service_runqueue_wait" in x:
            parts.append(
                f"{label} {100 * x['service_on_cpu']:.0f}% on a CPU, "
                f"{100 * x['service_runqueue_wait']:.0f}% waiting for one"
            )
    busy = ", ".join(
        f"{name.split(':')[0]} {x['machine_busy_cores']:.1f}" for name, x in load.items()
    )
    service = f"service: {'; '.join(parts)}\n" if parts else ""
    return f"{service}all cores busy (of {os.cpu_count()}) by phase: {busy}"


def fmt(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:,.{digits}f}"


def _cpu_ms(rounds: list[dict[str, Any]], kind: str) -> float:
    """CPU milliseconds the server spent per answered request (robust to other load)."""
    return _mean(1000 * r[kind]["server_cores"] / r[kind]["rps"] for r in rounds)


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else float("nan")

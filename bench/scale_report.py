"""Figure 10's rows (bench/scale.py's raw figures), judged against its targets: every
query and page within 1 s, webhook p99 within 50 ms while the slowest page loops, and
accept on the full store at least 0.9 x the empty store's."""

from __future__ import annotations

import re
from typing import Any

from bench.report import DATABASES, Row, fmt

QUERY_SECONDS = 1.0
WEBHOOK_P99_MS = 50.0
ACCEPT_RATIO = 0.9
READY_SECONDS = 2.0


def rows(data: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for kind, name in DATABASES.items():
        d = data.get(f"scale_{kind}")
        if d is None:
            continue
        n = f"{d['events']:,}"
        empty, full = d["accept_empty"]["rps"], d["accept_full"]["rps"]
        out.append(
            Row(
                "10",
                f"{name}: accept on {n} events (wrk, Prefect down)",
                f"{fmt(full)} ev/s",
                f"empty store {fmt(empty)} ev/s",
                f"{full / empty:.2f} x",
                f">= {ACCEPT_RATIO} x",
                full / empty >= ACCEPT_RATIO and d["accept_full"]["errors"] == 0,
            )
        )
        out.append(
            Row(
                "10",
                f"{name}: start to ready on {n} events (a restart)",
                f"{d['restart_ready_seconds']:.2f} s",
                f"first after the upgrade {d['ready_seconds']:.2f} s",
                f"upgrade 3->4 {d['upgrade_seconds']:.0f} s",
                f"<= {READY_SECONDS:g} s",
                d["restart_ready_seconds"] <= READY_SECONDS,
            )
        )
        for q in d["queries"]:
            ok = q["max_s"] <= QUERY_SECONDS and q["statuses"] == [200]
            out.append(
                Row(
                    "10",
                    f"{name}: GET {_short(q['path'])}",
                    f"{q['median_s'] * 1000:.0f} ms (max {q['max_s'] * 1000:.0f})",
                    f"HTTP {'/'.join(map(str, q['statuses']))}",
                    "",
                    f"<= {QUERY_SECONDS:g} s",
                    ok,
                )
            )
        alone, beside = d["webhooks_alone"], d["webhooks_beside"]
        out.append(
            Row(
                "10",
                f"{name}: webhook p50 / p99 while {_short(d['slowest_path'])} loops",
                f"{beside['p50_ms']:.1f} / {beside['p99_ms']:.1f} ms",
                f"alone {alone['p50_ms']:.1f} / {alone['p99_ms']:.1f} ms",
                f"{beside['page_loads']} loads",
                f"p99 <= {WEBHOOK_P99_MS:g} ms",
                beside["p99_ms"] <= WEBHOOK_P99_MS and beside["accepted"] == beside["sent"],
            )
        )
        p = d["prune"]
        out.append(
            Row(
                "10",
                f"{name}: prune half the month; writes meanwhile p50 / p99 / max",
                f"{p['removed']:,} in {p['seconds']:.1f} s",
                f"{p['write_p50_ms']:.1f} / {p['write_p99_ms']:.1f} / {p['write_max_ms']:.0f} ms",
                f"vacuum {p['vacuum_seconds']:.1f} s",
            )
        )
        out.append(
            Row(
                "10",
                f"{name}: store size before / after the prune",
                f"{d['size_before_prune_mb']:,.0f} / {d['size_after_prune_mb']:,.0f} MB",
                f"{d['size_mb']:,.0f} MB as filled",
            )
        )
    return out


def _short(path: str) -> str:
    """A path with its long cursor or id cut, for the table."""
    head, _, tail = path.partition("cursor=")
    if tail:
        return f"{head}cursor=<mid-month>"
    parts = path.split("/")
    if re.fullmatch("[0-9a-f]{32}", parts[-1]):
        return "/".join([*parts[:-1], "<id>"])
    return path

"""Runs the whole bench on this machine, one phase after another; prints its table (each
figure beside its baseline from the same run) and writes ``bench/results/latest.json``.

    python3 tools/dev.py bench [--quick] [--only N ...]    (or: .venv/bin/python -m bench.run)
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench import phases, real_prefect, report, scale
from bench.harness import FULL, QUICK, WRK_CONNECTIONS, WRK_THREADS, Harness, machine
from bench.procs import ROOT

RESULTS = ROOT / "bench" / "results"
# (the figures it measures, numbered as in bench/README.md; its name; the phase), in the
# order they run. The real Prefect goes last: booting it is slow, and 8 and 9 stop and
# restart it.
PHASES: tuple[tuple[tuple[str, ...], str, Callable[[Harness], None]], ...] = (
    (("0",), "0: wrk's own ceiling", phases.wrk_ceiling),
    (("1", "2"), "1+2: ceiling, durable accept and ingest", phases.ceiling_accept_and_ingest),
    (("3", "4"), "3+4: accept latency and end to end", phases.accept_latency_and_end_to_end),
    (("6",), "6: backlog drain", phases.backlog_drain),
    (("6",), "6: backlog drain with a rate cap", phases.capped_backlog_drain),
    (("7",), "7: start to ready", phases.start_to_ready),
    (("10",), "10: a month of loads on SQLite", scale.on_sqlite),
    (("10",), "10: a month of loads on PostgreSQL", scale.on_postgres),
    (("5", "8"), "5+8: real Prefect on SQLite", real_prefect.on_sqlite),
    (("8", "9"), "8+9: real Prefect on PostgreSQL", real_prefect.on_postgres),
)
FIGURES = sorted({number for numbers, _, _ in PHASES for number in numbers})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (about 6 minutes)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=FIGURES,
        metavar="N",
        help="measure only these figures (numbers as in bench/README.md; 1 comes with 2)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, dbs)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (Debian: apt-get install wrk)")
        return 2
    plan = QUICK if args.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    h = Harness(plan, work, only=frozenset(args.only or ()))
    started = time.monotonic()
    info = machine()
    scope = f", figures {' '.join(sorted(h.only))} only" if h.only else ""
    h.say(f"{plan.name} run{scope}; work directory {work}")
    h.say(
        f"machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}, "
        f"{info['wrk']}, Prefect {info['prefect']}, PostgreSQL {info['postgresql']}"
    )
    for numbers, name, phase in PHASES:
        if h.wants(*numbers):
            h.phase(name, phase)
    rows = report.rows(h.data)
    table = report.render(rows)
    elapsed = time.monotonic() - started
    print()
    print(
        f"erathos-prefect-bridge bench ({plan.name}{scope}, {elapsed:.0f} s): {info['nproc']} x "
        f"{info['cpu']}, Python {info['python']}, SQLite {info['sqlite']}, PostgreSQL "
        f"{info['postgresql']}, uvicorn {info['uvicorn_loop']}/{info['uvicorn_http']}, "
        f"{info['wrk']} (-t{WRK_THREADS} -c{WRK_CONNECTIONS}), Prefect {info['prefect']}, "
        f"{info['git']}"
    )
    print(table)
    print(report.contention(h.data, h.load))
    for name, error in h.errors.items():
        print(f"phase failed: {name}: {error}")
    RESULTS.mkdir(exist_ok=True)
    # A partial run leaves the last full run's figures alone.
    latest = RESULTS / ("latest.json" if not h.only else f"only-{'-'.join(sorted(h.only))}.json")
    latest.write_text(
        json.dumps(
            {
                "plan": asdict(plan),
                "only": sorted(h.only),
                "machine": info,
                "elapsed_seconds": elapsed,
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "rows": [asdict(r) | {"result": r.result} for r in rows],
                "errors": h.errors,
                "phases": h.load,
                "data": h.data,
            },
            indent=2,
            default=str,
        )
    )
    print(f"\nwritten: {latest.relative_to(ROOT)}")
    if args.keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if h.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Runs the whole bench on this machine, one phase after another; prints its table (each
figure beside its baseline from the same run) and writes ``bench/results/latest.json``.

    python3 tools/dev.py bench [--quick]      (or: .venv/bin/python -m bench.run [--quick])
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench import phases, report
from bench.harness import FULL, QUICK, WRK_CONNECTIONS, WRK_THREADS, Harness, machine
from bench.procs import ROOT

RESULTS = ROOT / "bench" / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (under 3 minutes)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, dbs)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (Debian: apt-get install wrk)")
        return 2
    plan = QUICK if args.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    h = Harness(plan, work)
    started = time.monotonic()
    info = machine()
    h.say(f"{plan.name} run; work directory {work}")
    h.say(
        f"machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}, "
        f"{info['wrk']}, Prefect {info['prefect']}"
    )
    # Numbered as in bench/README.md. The real Prefect goes last: booting it is slow, and
    # 8 stops and restarts it.
    h.phase("0: wrk's own ceiling", phases.wrk_ceiling)
    h.phase("1+2: ceiling and ingest", phases.ceiling_and_ingest)
    h.phase("3+4: accept latency and end to end", phases.accept_latency_and_end_to_end)
    h.phase("6: backlog drain", phases.backlog_drain)
    h.phase("6: backlog drain with a rate cap", phases.capped_backlog_drain)
    h.phase("7: start to ready", phases.start_to_ready)
    h.phase("5+8: real Prefect", phases.against_real_prefect)
    rows = report.rows(h.data)
    table = report.render(rows)
    elapsed = time.monotonic() - started
    print()
    print(
        f"erathos-prefect-bridge bench ({plan.name}, {elapsed:.0f} s): {info['nproc']} x "
        f"{info['cpu']}, Python {info['python']}, SQLite {info['sqlite']}, uvicorn "
        f"{info['uvicorn_loop']}/{info['uvicorn_http']}, {info['wrk']} "
        f"(-t{WRK_THREADS} -c{WRK_CONNECTIONS}), Prefect {info['prefect']}, {info['git']}"
    )
    print(table)
    print(report.contention(h.data, h.load))
    for name, error in h.errors.items():
        print(f"phase failed: {name}: {error}")
    RESULTS.mkdir(exist_ok=True)
    latest = RESULTS / "latest.json"
    latest.write_text(
        json.dumps(
            {
                "plan": asdict(plan),
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

#!/usr/bin/env python3
"""One entry point for working on erathos-prefect-bridge: run, test, lint, lock, bench.

Standard library only, so it runs with the system ``python3`` before any virtual
environment exists; it creates ``.venv`` itself from the hashed locks.

    python3 tools/dev.py run            the service (with no Prefect configured: a local one too)
    python3 tools/dev.py test [ARGS]    pytest against a real local Prefect server
    python3 tools/dev.py lint           ruff check, ruff format --check and mypy
    python3 tools/dev.py bench [ARGS]   the benchmark, bench/run.py (--quick: under 3 minutes)
    python3 tools/dev.py lock           regenerate the hashed requirements/*.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `tools.localprefect`, whatever the current directory

from tools.localprefect import PrefectServer, free_port, prefect_executable  # noqa: E402

VENV = ROOT / ".venv"
BIN = VENV / "bin"
PIP = ["-m", "pip", "--quiet", "--disable-pip-version-check"]
LOCKS = ("runtime", "test", "prefect-server")
UV_COMPILE = ["--quiet", "--universal", "--python-version", "3.11"]  # every platform, 3.11+
UV_COMPILE += ["--generate-hashes", "--no-header"]  # for --require-hashes; no paths or dates
# Options that would tie a lock to one package index (any "index-url" spelling matches).
FORBIDDEN_IN_LOCKS = ("index-url", "find-links")
DEV_FLOW = "erathos-dbt"
TOKEN_FILE = Path("data/dev-webhook-token")
READY_TIMEOUT = 60.0


def say(message: str) -> None:
    print(f"dev: {message}", file=sys.stderr, flush=True)


def run(*command: str | Path) -> int:
    return subprocess.run([str(part) for part in command], check=False).returncode


def ensure_venv(lock_name: str) -> None:
    """Install ``requirements/<lock_name>.txt`` and the project into .venv, if the lock changed."""
    lock = Path("requirements") / f"{lock_name}.txt"
    stamp = VENV / f".stamp-{lock_name}"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest:
        return
    if not (BIN / "python").exists():
        say("creating .venv")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    say(f"installing {lock} into .venv")
    python = str(BIN / "python")
    subprocess.run([python, *PIP, "install", "--require-hashes", "-r", str(lock)], check=True)
    subprocess.run([python, *PIP, "install", "--no-deps", "-e", "."], check=True)
    stamp.write_text(digest + "\n")


def dotenv() -> dict[str, str]:
    """``./.env`` as the service reads it (plain ``KEY=value`` lines; enough to decide the mode)."""
    values: dict[str, str] = {}
    path = Path(".env")
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().removeprefix("export ").partition("=")
        value = value.strip()
        if value[:1] in ("'", '"'):
            value = value[1:].partition(value[0])[0]
        else:
            value = value.split(" #")[0].strip()  # an inline comment
        if sep and key and not key.startswith("#"):
            values[key.strip().upper()] = value
    return values


def setting(name: str, default: str = "") -> str:
    """A setting as the service sees it: the environment first, then ``.env``."""
    return os.environ.get(name) or dotenv().get(name) or default


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def webhook_token() -> str:
    """BRIDGE_WEBHOOK_TOKEN if set, else one generated once and kept in data/dev-webhook-token."""
    configured = setting("BRIDGE_WEBHOOK_TOKEN")
    if configured:
        return configured
    if TOKEN_FILE.exists():
        return TOKEN_FILE.read_text().strip()
    token = secrets.token_urlsafe(32)
    TOKEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(TOKEN_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(token + "\n")
    return token


def wait_ready(service: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise SystemExit(f"dev: the service exited with code {service.returncode}; see above")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:  # refused, or 503 while the store is not writable yet
            pass
        time.sleep(0.3)
    raise SystemExit(f"dev: the service did not answer 200 on {url} in {READY_TIMEOUT:.0f} s")


def stop(service: subprocess.Popen[bytes]) -> None:
    if service.poll() is not None:
        return
    service.send_signal(signal.SIGTERM)
    try:
        service.wait(30)  # longer than the default BRIDGE_SHUTDOWN_GRACE
    except subprocess.TimeoutExpired:
        service.kill()
        service.wait()


def example_curl(base_url: str, token: str) -> str:
    body = {  # what Erathos sends for `erathos-template`: every value a string
        "job_id": str(uuid.uuid4()),
        "connection_name": "Shop Postgres",
        "schema_name": "raw_shop",
        "table_name": "orders",
        "execution_id": str(uuid.uuid4()),
        "status": "FINISHED",
        "rows": "1520",
        "total_duration": "42",
        "triggered_by": "Erathos Schedule",
        "is_orchestration": "false",
        "finished_at_date": time.strftime("%Y-%m-%d"),
        "finished_at_time": time.strftime("%H:%M"),
    }
    return (
        f"curl -sS -X POST {base_url}/webhooks/erathos \\\n"
        f"  -H {shlex.quote('Authorization: Bearer ' + token)} \\\n"
        "  -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(json.dumps(body))}"
    )


def cmd_run() -> int:
    ensure_venv("runtime")
    executable = str(BIN / "erathos-prefect-bridge")
    if setting("PREFECT_API_URL") or setting("PREFECT_ACCOUNT_ID"):
        # Real settings: the service replaces this process, with the environment unchanged.
        os.execv(executable, [executable, "serve"])  # noqa: S606
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    home = (Path("data") / "prefect").resolve()
    # Not PrefectServer.launch(): holding the object first lets a Ctrl-C during start-up stop it.
    prefect = PrefectServer(port=4200 if port_is_free(4200) else free_port(), home=home, ui=True)
    service: subprocess.Popen[bytes] | None = None
    try:
        say("no Prefect configured: starting a local Prefect server (data/prefect)")
        prefect.start(wait=120)
        flow_id = prefect.create_flow(DEV_FLOW)
        token = webhook_token()
        first_token = token.split(",")[0]  # BRIDGE_WEBHOOK_TOKEN may list several
        host, port = setting("BRIDGE_HOST", "127.0.0.1"), setting("BRIDGE_PORT", "8080")
        settings = {
            "PREFECT_API_URL": prefect.api_url,
            "PREFECT_FLOW_ID": flow_id,
            "BRIDGE_WEBHOOK_TOKEN": token,
        }
        env = os.environ | settings
        # Its own session: a Ctrl-C reaches only us, and we stop it exactly once.
        service = subprocess.Popen([executable, "serve"], env=env, start_new_session=True)
        local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
        base_url = f"http://{local}:{port}"
        wait_ready(service, f"{base_url}/readyz")
        print(
            f"\nThe bridge is ready at {base_url}\n"
            f"Prefect UI: http://127.0.0.1:{prefect.port}/ (flow {DEV_FLOW!r}, id {flow_id})\n"
            f"Webhook token: {first_token}\n\n"
            "Send it what Erathos sends (run it twice: the second answer is a duplicate):\n\n"
            f"{example_curl(base_url, first_token)}\n\n"
            "The webhook definition to create in Erathos:\n\n"
            "  .venv/bin/erathos-prefect-bridge erathos-template --url https://<your public url>\n"
            "\nCtrl-C stops the bridge and the local Prefect server.\n",
            flush=True,
        )
        return service.wait()
    except KeyboardInterrupt:
        say("stopping")
        return 130
    finally:
        if service is not None:
            stop(service)
        prefect.stop()


def cmd_test(pytest_args: list[str]) -> int:
    ensure_venv("test")
    prefect_executable()  # build the Prefect server's environment now, not inside a fixture
    # BRIDGE_TEST_DATABASE_URL and everything else of the environment pass through.
    return run(BIN / "python", "-m", "pytest", *pytest_args)


def cmd_bench(bench_args: list[str]) -> int:
    ensure_venv("test")
    prefect_executable()  # the real Prefect server's environment, built once
    if shutil.which("wrk") is None and shutil.which("apt-get") is not None and os.geteuid() == 0:
        say("installing wrk from Debian's packages")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False)
    return run(BIN / "python", "-m", "bench.run", *bench_args)


def cmd_lint() -> int:
    ensure_venv("test")
    results = [
        run(BIN / "ruff", "check", "."),
        run(BIN / "ruff", "format", "--check", "."),
        run(BIN / "mypy"),  # files and strictness come from pyproject.toml
    ]
    return 0 if not any(results) else 1


def cmd_lock() -> int:
    uv = shutil.which("uv")
    if uv is None:
        if not (BIN / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(BIN / "python"), *PIP, "install", "uv"], check=True)
        uv = str(BIN / "uv")
    for name in LOCKS:
        say(f"locking requirements/{name}.txt")
        # From requirements/, so the locks' "# via -r runtime.in" comments name no directory.
        command = [uv, "pip", "compile", *UV_COMPILE, f"{name}.in", "-o", f"{name}.txt"]
        subprocess.run(command, cwd="requirements", check=True)
    bad = [
        f"requirements/{name}.txt names --{option}"
        for name in LOCKS
        for option in FORBIDDEN_IN_LOCKS
        if f"--{option}" in (Path("requirements") / f"{name}.txt").read_text()
    ]
    for problem in bad:
        say(f"{problem}: a lock must not name a package index or a download location")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tools/dev.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("command", choices=["run", "test", "lint", "lock", "bench"])
    parser.add_argument(
        "args", nargs=argparse.REMAINDER, help="pytest's arguments, for test; --quick, for bench"
    )
    options = parser.parse_args(argv)
    if options.args and options.command not in ("test", "bench"):
        parser.error(f"{options.command} takes no arguments")
    os.chdir(ROOT)  # .venv, data/ and .env are the project root's, as for the service
    try:
        if options.command == "run":
            return cmd_run()
        if options.command == "test":
            return cmd_test(options.args)
        if options.command == "lint":
            return cmd_lint()
        if options.command == "bench":
            return cmd_bench(options.args)
        return cmd_lock()
    except subprocess.CalledProcessError as exc:
        say(f"failed ({exc.returncode}): {shlex.join(str(a) for a in exc.cmd)}")
        return exc.returncode or 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

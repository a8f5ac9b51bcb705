#!/usr/bin/env python3
"""One entry point for working on erathos-prefect-bridge: run, test, lint, lock, bench.

Standard library only, so it runs with the system ``python3`` before any virtual
environment exists; it creates ``.venv`` itself from the hashed locks.

    python3 tools/dev.py run            the service (with no Prefect configured: a local one,
                                        the example flow served, and .env for the CLI)
    python3 tools/dev.py test [ARGS]    pytest against a real local Prefect server
    python3 tools/dev.py lint           ruff, mypy, deptry, the layering contract and the
                                        documentation site (mkdocs build --strict)
    python3 tools/dev.py bench [ARGS]   the benchmark, bench/run.py (--quick: about 6 minutes)
    python3 tools/dev.py lock           regenerate the hashed requirements/*.txt
    python3 tools/dev.py package        the wheel, installed as `pip install` does, served
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
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `tools.localprefect`, whatever the current directory

from tools import package_check  # noqa: E402
from tools.installer import (  # noqa: E402
    INSTALLER_LOCK,
    PIP,
    LockInstallError,
    create_venv,
    install_lock,
)
from tools.localprefect import (  # noqa: E402
    EXAMPLE_DEPLOYMENT,
    EXAMPLE_FLOW,
    EXAMPLE_ROUTES,
    EXAMPLE_SET_DEPLOYMENT,
    PrefectError,
    PrefectServer,
    ServedFlow,
    free_port,
    prefect_executable,
)

VENV = ROOT / ".venv"
BIN = VENV / "bin"
# Each lock and what it is compiled from, in requirements/: the service's dependencies come
# from pyproject alone, so .venv and the image hold exactly what `pip install` declares.
LOCKS = {
    "installer": ["installer.in"],
    "runtime": ["../pyproject.toml"],
    "test": ["../pyproject.toml", "--extra", "test", "test.in"],
    "prefect-server": ["prefect-server.in"],
}
UV_COMPILE = ["--quiet", "--universal", "--python-version", "3.11"]  # every platform, 3.11+
UV_COMPILE += ["--generate-hashes", "--no-header"]  # for --require-hashes; no paths or dates
# Options that would tie a lock to one package index (any "index-url" spelling matches).
FORBIDDEN_IN_LOCKS = ("index-url", "find-links")
TOKEN_FILE = Path("data/dev-webhook-token")
ADMIN_TOKEN_FILE = Path("data/dev-admin-token")
EXAMPLE_EVENT = ROOT / "examples" / "event.json"
DOTENV = Path(".env")
# The first line of the .env the newcomer mode writes: only a .env with it is rewritten,
# and its values do not count as the user's own settings.
NEWCOMER_MARKER = "# Written by `python3 tools/dev.py run` (newcomer mode) for its local Prefect."
PREFECT_PORT = 4200
READY_TIMEOUT = 60.0
START_TIMEOUT = 120.0  # the first start builds Prefect's environment and database


def say(message: str) -> None:
    print(f"dev: {message}", file=sys.stderr, flush=True)


def run(*command: str | Path) -> int:
    return subprocess.run([str(part) for part in command], check=False).returncode


def ensure_venv(lock_name: str) -> None:
    """Install ``requirements/<lock_name>.txt`` and the project into .venv, if the lock (or
    the installer's) changed since the last install."""
    lock = Path("requirements") / f"{lock_name}.txt"
    stamp = VENV / f".stamp-{lock_name}"
    digest = hashlib.sha256(INSTALLER_LOCK.read_bytes() + lock.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest:
        return
    if not (BIN / "python").exists():
        say(f"creating .venv from {lock}")
        create_venv(VENV, lock)
    else:
        say(f"installing {lock} into .venv")
        install_lock(VENV, INSTALLER_LOCK)
        install_lock(VENV, lock)
    # The project itself, built with the locked setuptools (no isolated build environment
    # fetching the registry's newest).
    python = str(BIN / "python")
    subprocess.run(
        [python, *PIP, "install", "--no-deps", "--no-build-isolation", "-e", "."], check=True
    )
    stamp.write_text(digest + "\n")


def newcomer_wrote_dotenv() -> bool:
    """Whether ``./.env`` is the one the newcomer mode wrote (it carries the marker)."""
    return DOTENV.is_file() and NEWCOMER_MARKER in DOTENV.read_text().splitlines()


def dotenv() -> dict[str, str]:
    """The user's ``./.env`` as the service reads it (plain ``KEY=value`` lines; enough to
    decide the mode). The one the newcomer mode wrote holds no setting of the user's."""
    values: dict[str, str] = {}
    if not DOTENV.is_file() or newcomer_wrote_dotenv():
        return values
    for line in DOTENV.read_text().splitlines():
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
    """Whether a server could listen on ``port`` now. With SO_REUSEADDR, as servers bind
    (uvicorn too): the connections of a server stopped a moment ago, left in TIME_WAIT,
    do not hold the port, so Prefect comes back on 4200 after a quick restart."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def dev_token(variable: str, path: Path) -> str:
    """The setting if configured, else a token generated once and kept in ``path`` (0600)."""
    configured = setting(variable)
    if configured:
        return configured
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(token + "\n")
    return token


def dotenv_line(name: str, value: str) -> str:
    if all(c.isalnum() or c in "_-.,:/@+=" for c in value):
        return f"{name}={value}"
    return f"{name}={json.dumps(value)}"  # double-quoted, with the escapes .env readers know


def write_newcomer_dotenv(settings: dict[str, str]) -> bool:
    """Write the newcomer mode's settings to ``./.env``, where the CLI reads them; never
    over a ``.env`` the user wrote (one without the marker). True when written."""
    if DOTENV.exists() and not newcomer_wrote_dotenv():
        return False
    lines = [
        NEWCOMER_MARKER,
        "# Rewritten at each newcomer run. To keep your own settings here, remove that line.",
        *(dotenv_line(name, value) for name, value in settings.items()),
    ]
    partial = DOTENV.with_name(".env.partial")
    partial.unlink(missing_ok=True)
    with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write("\n".join(lines) + "\n")
    partial.replace(DOTENV)
    return True


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


def example_body() -> dict[str, str]:
    """What Erathos sends for ``erathos-template`` (every value a string): the load of
    ``examples/event.json``, as a new execution of its job that finished just now."""
    body: dict[str, str] = json.loads(EXAMPLE_EVENT.read_text())
    return body | {
        "execution_id": str(uuid.uuid4()),
        "finished_at_date": time.strftime("%Y-%m-%d"),
        "finished_at_time": time.strftime("%H:%M"),
    }


def example_set_body() -> dict[str, str]:
    """The load that completes the example set ``shop`` (``examples/routes.json``) once the
    example load of ``raw_shop.orders`` has arrived: ``raw_shop.customers``, as a new
    execution of another job."""
    return example_body() | {
        "job_id": str(uuid.uuid4()),
        "table_name": "customers",
        "rows": "312",
    }


def example_curl(base_url: str, token: str, body: dict[str, str]) -> str:
    return (
        f"curl -sS -X POST {base_url}/webhooks/erathos \\\n"
        f"  -H {shlex.quote('Authorization: Bearer ' + token)} \\\n"
        "  -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(json.dumps(body))}"
    )


class Stopped(KeyboardInterrupt):
    """A signal to stop: Ctrl-C (SIGINT), SIGTERM, or SIGHUP (its terminal closed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def stop_on_signal(signum: int, _frame: object) -> None:
    raise Stopped(signum)


# What stops `run` and everything it started. SIGHUP too: the children run in sessions
# of their own, so a closed terminal reaches only this process, which must stop them.
STOP_SIGNALS = [signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]


def cmd_run() -> int:
    # A background job of a non-interactive shell starts with SIGINT ignored, and Python
    # keeps an ignored signal ignored: restore it, so `kill -INT` stops us as Ctrl-C does.
    signal.signal(signal.SIGINT, stop_on_signal)
    ensure_venv("runtime")
    executable = str(BIN / "erathos-prefect-bridge")
    if setting("PREFECT_API_URL") or setting("PREFECT_ACCOUNT_ID"):
        if newcomer_wrote_dotenv():
            say("./.env was written by the newcomer mode and still applies beneath your")
            say("settings (BRIDGE_ROUTES_FILE, the tokens): remove it to use only your own")
        # Real settings: the service replaces this process, with the environment unchanged.
        os.execv(executable, [executable, "serve"])  # noqa: S606
    for signum in STOP_SIGNALS:
        signal.signal(signum, stop_on_signal)
    return run_newcomer(executable)


def run_newcomer(executable: str) -> int:
    """A local Prefect server, the example flow served by it, and the service routing
    FINISHED loads to that flow: the printed curl ends in a COMPLETED flow run."""
    host, port = setting("BRIDGE_HOST", "127.0.0.1"), int(setting("BRIDGE_PORT", "8080"))
    if not port_is_free(port):
        say(
            f"port {port} is taken (a bridge still running? `ss -ltnp 'sport = :{port}'` "
            "names the process): stop what listens there, or set BRIDGE_PORT"
        )
        return 1
    prefect_port = PREFECT_PORT if port_is_free(PREFECT_PORT) else free_port()
    if prefect_port != PREFECT_PORT:
        say(f"port {PREFECT_PORT} is taken: the local Prefect server uses {prefect_port}")
    # Not PrefectServer.launch(): holding the objects first lets a Ctrl-C during start-up
    # stop what has started.
    # With its services: the event feed shows the bridge's events, automations act on them.
    prefect = PrefectServer(
        port=prefect_port, home=Path("data/prefect").resolve(), ui=True, services=True
    )
    flow = ServedFlow(prefect, home=Path("data/prefect-flow").resolve())
    service: subprocess.Popen[bytes] | None = None
    try:
        say("no Prefect configured: starting a local Prefect server (data/prefect)")
        prefect.start(wait=START_TIMEOUT)
        say(f"serving {EXAMPLE_FLOW.relative_to(ROOT)} with Prefect's own flow.serve()")
        deployment_id = flow.start(wait=START_TIMEOUT)
        webhook = dev_token("BRIDGE_WEBHOOK_TOKEN", TOKEN_FILE)
        admin = dev_token("BRIDGE_ADMIN_TOKEN", ADMIN_TOKEN_FILE)
        settings = {
            "PREFECT_API_URL": prefect.api_url,
            "BRIDGE_ROUTES_FILE": str(EXAMPLE_ROUTES.relative_to(ROOT)),
            "BRIDGE_WEBHOOK_TOKEN": webhook,
            "BRIDGE_ADMIN_TOKEN": admin,
            "BRIDGE_PREFECT_EVENTS": "true",
        }
        wrote_dotenv = write_newcomer_dotenv(settings)
        # Its own session: a Ctrl-C reaches only us, and we stop it exactly once.
        service = subprocess.Popen(
            [executable, "serve"], env=os.environ | settings, start_new_session=True
        )
        local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
        base_url = f"http://{local}:{port}"
        wait_ready(service, f"{base_url}/readyz")
        ui = f"http://127.0.0.1:{prefect.port}"
        print(
            newcomer_printout(
                base_url=base_url,
                ui=ui,
                deployment_url=f"{ui}/deployments/deployment/{deployment_id}",
                webhook_token=webhook.split(",")[0],  # BRIDGE_WEBHOOK_TOKEN may list several
                admin_token=admin,
                wrote_dotenv=wrote_dotenv,
                settings=settings,
            ),
            flush=True,
        )
        while service.poll() is None:
            if not flow.running():
                say("the example flow stopped serving; stopping everything")
                return 1
            time.sleep(0.5)
        return service.returncode
    except KeyboardInterrupt as exc:
        say("stopping")
        # Asked to stop (SIGTERM, SIGHUP): a clean stop, as serve's; Ctrl-C: 130, as a shell's.
        return 0 if isinstance(exc, Stopped) and exc.signum != signal.SIGINT else 130
    except PrefectError as exc:
        say(str(exc))
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave a process behind.
        for signum in (signal.SIGINT, *STOP_SIGNALS):
            signal.signal(signum, signal.SIG_IGN)
        if service is not None:
            stop(service)
        flow.stop()
        prefect.stop()


def newcomer_printout(
    *,
    base_url: str,
    ui: str,
    deployment_url: str,
    webhook_token: str,
    admin_token: str,
    wrote_dotenv: bool,
    settings: dict[str, str],
) -> str:
    cli = ".venv/bin/erathos-prefect-bridge"
    if wrote_dotenv:
        where = "written to ./.env: the CLI reads them from this directory"
    else:
        exports = " ".join(dotenv_line(name, value) for name, value in settings.items())
        where = (
            "./.env is yours (no newcomer marker): left untouched. For the CLI, first:\n"
            f"                    export {exports}"
        )
    return f"""
The bridge is ready at {base_url}

  Prefect UI        {ui}/
  example flow      {EXAMPLE_FLOW.relative_to(ROOT)} (put your dbt/transform call there),
                    served as the deployment {EXAMPLE_DEPLOYMENT}; its runs:
                    {deployment_url}
  routes            {EXAMPLE_ROUTES.relative_to(ROOT)}: each FINISHED load runs
                    {EXAMPLE_DEPLOYMENT}; its set "shop" runs {EXAMPLE_SET_DEPLOYMENT}
                    once raw_shop.orders and raw_shop.customers have both loaded today
                    (deadline 07:00 UTC)
  Prefect events    every load is also an event (erathos.job.finished, ...): {ui}/events
  webhook token     {webhook_token}  (data/dev-webhook-token)
  admin token       {admin_token}  (data/dev-admin-token; the admin API is on)
  console           {base_url}/ui/  (sign in with the admin token)
  settings          {where}

Send it what Erathos sends (run it twice: the second answer is a duplicate):

{example_curl(base_url, webhook_token, example_body())}

The answer's deliveries[0].flow_run_url opens the flow run in the Prefect UI: it is
COMPLETED within seconds, with typed parameters (rows is the integer 1520). Its status
may read "queued": the load's Prefect event counts once Prefect has stored it (read
back a few seconds later); `events` then shows "event sent" beside the run.

Its "sets" say the load joined the set "shop"'s open window (a load after a window
closed joins the next day's), with raw_shop.customers missing. Complete the set with
the load of customers:

{example_curl(base_url, webhook_token, example_set_body())}

Its "sets" say "completed": one run of {EXAMPLE_SET_DEPLOYMENT} gets both loads. The set's
windows: {cli} sets, or {base_url}/ui/sets.

From this directory:

  {cli} events            what arrived, and its flow runs
  {cli} sets              each set's open window: what arrived, what is missing
  {cli} check             the settings, Prefect, each route and set
  {cli} simulate examples/event.json
  {cli} erathos-template --url https://<your public url>
  curl -H 'Authorization: Bearer {admin_token}' {base_url}/events

Ctrl-C stops the bridge, the example flow and the local Prefect server.
"""


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
        # pyproject declares exactly what app/ imports (its [tool.deptry] says the rest).
        run(BIN / "deptry", "app"),
        # which package may import which ([tool.importlinter] in pyproject)
        run(BIN / "lint-imports", "--no-logo"),
        build_docs(),
    ]
    return 0 if not any(results) else 1


def build_docs() -> int:
    """The documentation site, strictly: a link to a missing page or anchor fails (mkdocs.yml)."""
    # Material prints a banner about MkDocs 2.0 on every build unless this is set.
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}
    with tempfile.TemporaryDirectory(prefix="site-") as site:
        command: list[str | Path] = [
            BIN / "mkdocs",
            "build",
            "--strict",  # not --quiet: it hides the warnings, and strict then passes
            "--site-dir",
            site,
        ]
        return subprocess.run(command, env=env, check=False).returncode


def cmd_package() -> int:
    ensure_venv("test")  # the locked setuptools builds the wheel
    return package_check.check(BIN / "python")


def cmd_lock() -> int:
    uv = shutil.which("uv")
    if uv is None:
        ensure_venv("test")
        subprocess.run([str(BIN / "python"), *PIP, "install", "uv"], check=True)
        uv = str(BIN / "uv")
    for name in LOCKS:
        say(f"locking requirements/{name}.txt")
        # From requirements/, so the locks' "# via" comments name no machine's directory.
        command = [uv, "pip", "compile", *UV_COMPILE, *LOCKS[name], "-o", f"{name}.txt"]
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
    parser.add_argument("command", choices=["run", "test", "lint", "lock", "bench", "package"])
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
        if options.command == "package":
            return cmd_package()
        return cmd_lock()
    except subprocess.CalledProcessError as exc:
        say(f"failed ({exc.returncode}): {shlex.join(str(a) for a in exc.cmd)}")
        return exc.returncode or 1
    except LockInstallError as exc:
        say(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

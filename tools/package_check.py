"""The package as ``pip install erathos-prefect-bridge`` gives it: the wheel built from
this tree, installed into a fresh virtual environment with the dependencies pyproject
declares (no lock: whatever the registry has now), ``pip check``, then ``serve`` with an
admin token, and its front pages asked for.

    python3 tools/dev.py package

What it proves that the tests cannot: the tests run in .venv, installed from the locks,
where a dependency that pyproject forgot is present anyway. Standard library only.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from tools.installer import INSTALLER_LOCK, PIP, install_lock
from tools.localprefect import free_port

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("/healthz", "/docs", "/ui/sign-in", "/")
START_TIMEOUT = 60.0


def say(message: str) -> None:
    print(f"package: {message}", file=sys.stderr, flush=True)


def check(build_python: Path) -> int:
    """Build with ``build_python`` (an environment holding the locked setuptools), install
    and serve; 0 when every page answers 200."""
    with tempfile.TemporaryDirectory(prefix="bridge-package-") as scratch:
        work = Path(scratch)
        dist = work / "dist"
        say("building the wheel")
        build = [str(build_python), *PIP, "wheel", "--no-deps", "--no-build-isolation"]
        subprocess.run([*build, "--wheel-dir", str(dist), str(ROOT)], check=True)
        [wheel] = dist.glob("*.whl")
        venv = work / "venv"
        say(f"installing {wheel.name} with pyproject's dependencies, no lock")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        install_lock(venv, INSTALLER_LOCK)
        python = str(venv / "bin" / "python")
        subprocess.run([python, *PIP, "install", str(wheel)], check=True)
        subprocess.run([python, *PIP, "check"], check=True)
        return serve_and_ask(venv / "bin" / "erathos-prefect-bridge", work)


def serve_and_ask(executable: Path, work: Path) -> int:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "PREFECT_"))}
    env |= {
        "BRIDGE_WEBHOOK_TOKEN": secrets.token_urlsafe(24),
        "BRIDGE_ADMIN_TOKEN": secrets.token_urlsafe(24),
        "BRIDGE_PORT": str(port),
        "BRIDGE_DATABASE_URL": f"sqlite:///{work / 'bridge.db'}",
        "BRIDGE_SECRETS_DIR": str(work),
        # Nothing listens there: the service starts and queues, as it does while Prefect is down.
        "PREFECT_API_URL": "http://127.0.0.1:9/api",
        "PREFECT_FLOW_ID": str(uuid.uuid4()),
    }
    log = work / "serve.log"
    with open(log, "wb") as output:
        # From an empty directory: no .env of the project's is read.
        service = subprocess.Popen(
            [str(executable), "serve"], cwd=work, env=env, stdout=output, stderr=output
        )
    try:
        answers = {page: ask(f"http://127.0.0.1:{port}{page}", service) for page in PAGES}
    finally:
        service.terminate()
        service.wait(30)
    failed = {page: status for page, status in answers.items() if status != 200}
    for page, status in answers.items():
        say(f"GET {page}: {status}")
    if failed:
        sys.stderr.write(log.read_text(errors="replace")[-4000:])
        say(f"FAILED: {', '.join(failed)} did not answer 200 (the service's log is above)")
        return 1
    say("the installed package serves")
    return 0


def ask(url: str, service: subprocess.Popen[bytes]) -> int | str:
    """The status ``url`` answers (redirects followed), once the service listens."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if service.poll() is not None:
            return f"the service exited with code {service.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            if time.monotonic() > deadline:
                return f"no answer in {START_TIMEOUT:.0f} s"
            time.sleep(0.3)

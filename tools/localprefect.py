"""A real Prefect server for the tests and the local run, from its own virtual environment.

``prefect`` is never a dependency of the service: it is installed once, from the
hashed lock ``requirements/prefect-server.txt``, into a cached virtual
environment (``$BRIDGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/erathos-prefect-bridge``),
and started as a separate process; ``ServedFlow`` runs a flow file with that
environment's Python (``flow.serve()``). Standard library only, so the set-up script
can use it before any virtual environment exists.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.installer import INSTALLER_LOCK, create_venv

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "prefect-server.txt"
# The example a newcomer's webhook ends in: a flow served by Prefect itself, and the
# routes file that sends FINISHED loads to its deployment.
EXAMPLE_FLOW = ROOT / "examples" / "flows" / "erathos_dbt.py"
EXAMPLE_DEPLOYMENT = "erathos-dbt/example"
EXAMPLE_SET_DEPLOYMENT = "erathos-set/example"  # the same file serves it: a set's run
EXAMPLE_ROUTES = ROOT / "examples" / "routes.json"


def cache_dir() -> Path:
    configured = os.environ.get("BRIDGE_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "erathos-prefect-bridge"


def prefect_executable() -> Path:
    """The ``prefect`` command of the cached environment, created on first use."""
    digest = hashlib.sha256(INSTALLER_LOCK.read_bytes() + LOCK.read_bytes()).hexdigest()[:12]
    venv = cache_dir() / f"prefect-server-{digest}"
    done = venv / ".complete"
    executable = venv / "bin" / "prefect"
    if done.exists():
        return executable
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be building it
        if done.exists():
            return executable
        shutil.rmtree(venv, ignore_errors=True)
        print(f"creating the Prefect server's environment in {venv} (once)", file=sys.stderr)
        create_venv(venv, LOCK)
        done.touch()
    return executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrefectError(Exception):
    pass


@dataclass
class PrefectServer:
    """One ``prefect server start`` process and a small REST client for setting it up."""

    port: int
    base_path: str = "/api"
    auth_string: str | None = None
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="prefect-home-")))
    ui: bool = False
    # The server's services (the event persister, triggers, actions): what automations
    # need. Off by default: the tests that only create flow runs start faster without.
    services: bool = False
    # Where the server keeps its data (PREFECT_API_DATABASE_CONNECTION_URL, e.g.
    # postgresql+asyncpg://postgres@127.0.0.1:5432/prefect); None: SQLite in ``home``.
    database_url: str | None = None
    # More of Prefect's own settings (PREFECT_SERVER_SERVICES_..._BATCH_SIZE, say).
    settings: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    @classmethod
    def launch(
        cls,
        *,
        port: int | None = None,
        base_path: str = "/api",
        auth_string: str | None = None,
        home: Path | None = None,
        ui: bool = False,
        services: bool = False,
        database_url: str | None = None,
        settings: dict[str, str] | None = None,
        wait: float = 60.0,
    ) -> PrefectServer:
        server = cls(
            port or free_port(),
            base_path,
            auth_string,
            ui=ui,
            services=services,
            database_url=database_url,
            settings=dict(settings or {}),
        )
        if home is not None:
            server.home = home
        server.start(wait=wait)
        return server

    def start(self, *, wait: float = 60.0) -> None:
        executable = prefect_executable()
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "true" if self.ui else "false",
            "PREFECT_UI_ENABLED": "true" if self.ui else "false",
            "PREFECT_LOGGING_SERVER_LEVEL": "WARNING",
            "PREFECT_SERVER_API_BASE_PATH": self.base_path,
        }
        if self.ui:
            # The UI asks the API where the browser can reach it: at 4200 unless told.
            env["PREFECT_UI_API_URL"] = self.api_url
        if self.auth_string:
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth_string
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        env |= self.settings
        self.log_path = self.home / "server.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(executable),
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    *([] if self.services else ["--no-services"]),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_healthy(wait)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise PrefectError(f"the Prefect server exited; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise PrefectError(f"the Prefect server did not become healthy in {timeout:.0f} s")

    def kill(self) -> None:
        """``kill -9``: what it holds in memory and has not written is lost."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.api_url}/{path.lstrip('/')}", data=data, method=method
        )
        request.add_header("Content-Type", "application/json")
        if self.auth_string:
            token = base64.b64encode(self.auth_string.encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise PrefectError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:500]!r}") from None

    def create_flow(self, name: str) -> str:
        return str(self.request("POST", "flows/", {"name": name})["id"])

    def create_deployment(self, flow_id: str, name: str, **fields: Any) -> str:
        body = {"name": name, "flow_id": flow_id, **fields}
        return str(self.request("POST", "deployments/", body)["id"])

    def flow_runs(self, flow_id: str) -> list[dict[str, Any]]:
        """Every flow run of one flow (paged through; Prefect caps a page at 200)."""
        runs: list[dict[str, Any]] = []
        while True:
            page = self.request(
                "POST",
                "flow_runs/filter",
                {"flows": {"id": {"any_": [flow_id]}}, "limit": 200, "offset": len(runs)},
            )
            runs.extend(page)
            if len(page) < 200:
                return runs


@dataclass
class ServedFlow:
    """A flow file run with the Prefect environment's own Python: its ``flow.serve()``
    creates the deployment and executes the deployment's runs (no work pool, no
    worker). ``log_path`` None leaves its output on the terminal."""

    server: PrefectServer
    path: Path = EXAMPLE_FLOW
    deployment: str = EXAMPLE_DEPLOYMENT
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="prefect-flow-")))
    log_path: Path | None = None
    # How often the runner asks for scheduled runs: Prefect's default is 10 s.
    poll_seconds: int = 1
    process: subprocess.Popen[bytes] | None = None
    deployment_id: str | None = None

    def start(self, *, wait: float = 60.0) -> str:
        """Start serving and return the deployment's id once Prefect knows it."""
        python = prefect_executable().parent / "python"
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {
            "PREFECT_API_URL": self.server.api_url,
            "PREFECT_HOME": str(self.home),
            "PREFECT_RUNNER_POLL_FREQUENCY": str(self.poll_seconds),
        }
        if self.server.auth_string:
            env["PREFECT_API_AUTH_STRING"] = self.server.auth_string
        log = open(self.log_path, "ab") if self.log_path is not None else None  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                [str(python), str(self.path)],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT if log is not None else None,
                start_new_session=True,  # stopped with its flow-run subprocesses, as a group
            )
        finally:
            if log is not None:
                log.close()
        self.deployment_id = self.wait_deployment(wait)
        return self.deployment_id

    def wait_deployment(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                where = f"; see {self.log_path}" if self.log_path else ""
                raise PrefectError(f"serving {self.path.name} exited{where}")
            try:
                return str(self.server.request("GET", f"deployments/name/{self.deployment}")["id"])
            except (PrefectError, OSError):  # 404 until serve() has created it
                if time.monotonic() > deadline:
                    raise PrefectError(
                        f"{self.path.name} did not serve {self.deployment} in {timeout:.0f} s"
                    ) from None
            time.sleep(0.3)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if not self.running():
            return
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

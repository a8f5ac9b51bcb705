"""Every virtual environment the project's tooling makes: created with the Python that
runs the tooling, given the pinned pip of ``requirements/installer.txt`` first, then its
own hashed lock.

A lock installs the same way whatever pip a Python brought: the oldest that Python 3.11
ships (22.3) resolves a locked package's extras (``httpx[http2]``, asked for by
``prefect``) outside the lock and fails on whatever the registry published since the
lock was made. The installer lock holds pip and setuptools (the build backend of the
project, so ``pip install -e .`` builds with the locked one, not the registry's newest).
Standard library only: it runs before any virtual environment exists.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
INSTALLER_LOCK = REQUIREMENTS / "installer.txt"
PIP = ["-m", "pip", "--quiet", "--disable-pip-version-check"]


class LockInstallError(Exception):
    """A lock did not install: the message names the lock, the environment and what to do."""


def create_venv(venv: Path, lock: Path) -> None:
    """Make ``venv`` and install the pinned pip, then ``lock``, into it."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install_lock(venv, INSTALLER_LOCK)
    install_lock(venv, lock)


def install_lock(venv: Path, lock: Path) -> None:
    """``pip install --require-hashes -r lock`` with the environment's own pip; pip's
    own message comes first, on the terminal, then ours says which lock and what to do."""
    python = venv / "bin" / "python"
    command = [str(python), *PIP, "install", "--require-hashes", "-r", str(lock)]
    code = subprocess.run(command, check=False).returncode
    if code != 0:
        raise LockInstallError(install_advice(lock, venv, code))


def install_advice(lock: Path, venv: Path, code: int) -> str:
    name = lock.relative_to(ROOT) if lock.is_relative_to(ROOT) else lock
    return (
        f"could not install {name} into {venv} (pip exited {code}; its message is above).\n"
        "  - 'Could not find a version' or a connection error: the package registry is not\n"
        "    reachable from here (check `python3 -m pip config list` and any proxy), or a\n"
        "    locked release was withdrawn: regenerate the locks with `python3 tools/dev.py lock`.\n"
        "  - 'do not match the hashes': a download differs from what the lock recorded (a\n"
        "    mirror serving other files, or a damaged cache): retry with PIP_NO_CACHE_DIR=1.\n"
        "  - 'must have their versions pinned': the environment's pip is not the locked one\n"
        f"    ({INSTALLER_LOCK.relative_to(ROOT)}): delete {venv} and run the command again."
    )

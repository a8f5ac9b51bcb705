"""Every lock installs whatever pip a Python brought: the tooling first installs the
pinned pip of requirements/installer.txt (tools/installer.py), then the lock.

Python 3.11.0 ships pip 22.3, the oldest that Python 3.11, 3.12 and 3.13 bring. Such a
pip resolves a locked package's extras outside the lock (prefect asks for
``httpx[http2]``) and, in --require-hashes mode, fails on whatever the registry
published after the lock was made. These tests start from that pip and need the package
registry, as the set-up does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tools.installer import INSTALLER_LOCK, REQUIREMENTS, LockInstallError, install_lock

pytestmark = pytest.mark.slow

OLDEST_PIP = "22.3"


def venv_with_oldest_pip(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"pip=={OLDEST_PIP}"], check=True
    )
    return python


def pip_version(python: Path) -> str:
    out = subprocess.run(
        [str(python), "-m", "pip", "--version"], check=True, capture_output=True, text=True
    ).stdout
    return out.split()[1]


@pytest.mark.parametrize(
    "locks",
    [
        pytest.param(["prefect-server"], id="the-prefect-servers-environment"),
        pytest.param(["runtime", "test"], id="dot-venv"),
    ],
)
def test_every_lock_installs_from_the_oldest_pip_python_brings(
    tmp_path: Path, locks: list[str]
) -> None:
    python = venv_with_oldest_pip(tmp_path / "venv")
    assert pip_version(python) == OLDEST_PIP

    install_lock(tmp_path / "venv", INSTALLER_LOCK)
    for lock in locks:
        install_lock(tmp_path / "venv", REQUIREMENTS / f"{lock}.txt")

    locked_pip = next(
        line.split("==")[1].split()[0]
        for line in INSTALLER_LOCK.read_text().splitlines()
        if line.startswith("pip==")
    )
    assert pip_version(python) == locked_pip
    check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_a_lock_that_cannot_install_says_which_and_what_to_do(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    lock = tmp_path / "broken.txt"
    lock.write_text("pip==26.3 --hash=sha256:" + "0" * 64 + "\n")

    with pytest.raises(LockInstallError) as refused:
        install_lock(tmp_path / "venv", lock)

    message = str(refused.value)
    assert f"could not install {lock}" in message
    assert "do not match the hashes" in message
    assert "python3 tools/dev.py lock" in message

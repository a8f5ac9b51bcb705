"""The layout a newcomer relies on: one package per stage of an event's path, each small
enough to read, each with a face (its ``__init__`` says its job and exports its public
names), and no module too long to hold in one's head. The layering itself is import-linter's
contract (pyproject), checked by lint."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.support.paths import ROOT

APP = ROOT / "app"
PACKAGES = sorted(p.parent.name for p in APP.glob("*/__init__.py"))
MAX_MODULE_LINES = 400
MAX_PACKAGE_MODULES = 12


def test_the_stages_are_packages() -> None:
    assert PACKAGES == [
        "cli",
        "config",
        "console",
        "delivery",
        "intake",
        "routing",
        "server",
        "storage",
    ]


@pytest.mark.parametrize("module", sorted(APP.rglob("*.py")), ids=lambda p: str(p.relative_to(APP)))
def test_no_module_is_over_400_lines(module: Path) -> None:
    lines = len(module.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module.relative_to(APP)}: {lines} lines"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_is_over_12_modules(package: str) -> None:
    modules = [p for p in (APP / package).glob("*.py") if p.name != "__init__.py"]
    assert len(modules) <= MAX_PACKAGE_MODULES, f"{package}: {len(modules)} modules"


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_has_a_face(package: str) -> None:
    face = ast.parse((APP / package / "__init__.py").read_text())
    assert ast.get_docstring(face), f"app/{package}/__init__.py says nothing of its job"
    module = importlib.import_module(f"app.{package}")
    exported = getattr(module, "__all__", None)
    assert exported, f"app.{package} exports no public names"
    for name in exported:
        assert hasattr(module, name), f"app.{package}.__all__ names {name}, which it lacks"
        # A public name never hides a module of the package (app.intake.admin the router,
        # say, instead of the module).
        assert not (APP / package / f"{name}.py").exists(), f"app.{package}.{name} hides a module"

"""The import contract of docs/CONTRACT.md and shared/docs/style.md, checked on the source.

The import rules themselves are import-linter contracts in pyproject.toml (``lint-imports`` in CI);
these tests show the contracts hold on the tree and fail on each way of reaching the simulator's
truth, and scan app/ for what import-linter cannot see (tests/leaks.py): dynamic imports, strings
naming the simulator, and attribute access into a driver's private state.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.leaks import ROOT, driver_private_names, scan_app, scan_source

PACKAGES = ("app", "hardware", "bench")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """The Python sources of app/, hardware/, bench/ and the contracts, copied to a scratch tree."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.npz", "*.png"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_import_contracts_hold_on_the_tree() -> None:
    res = _lint_imports(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


@pytest.mark.parametrize(
    ("where", "line", "contract"),
    [
        # (a) the oracle, however it is spelled, from anywhere in app
        ("app/calibration/leak.py", "from hardware.sim import oracle", "ground truth"),
        ("app/services/leak.py", "import hardware.sim.oracle", "ground truth"),
        ("app/api/leak.py", "from hardware.sim.oracle import oracle_die_truth", "ground truth"),
        # ... or through a module that imports it
        ("app/services/leak.py", "from bench.oracle import oracle_for", "ground truth"),
        # the simulator's modules themselves
        ("app/calibration/leak.py", "from hardware.sim.driver import SimulatedFleet", "simulator itself"),
        ("app/calibration/leak.py", "from hardware.sim import variation", "simulator itself"),
        # the other layers
        ("hardware/leak.py", "import app.calibration", "hardware never imports app"),
        ("app/calibration/leak.py", "import sqlalchemy", "no web framework nor database"),
        ("app/nn/leak.py", "from app.services import models", "no web framework nor database"),
        ("app/calibration/leak.py", "from pydantic import BaseModel", "do not import pydantic"),
        ("app/api/leak.py", "from app.db.repositories import lots", "routers import neither"),
        ("app/api/leak.py", "from app.db.session import Session", "routers import neither"),
        ("app/api/leak.py", "import sqlalchemy", "routers import neither"),
    ],
)
def test_import_contracts_fail_on_an_injected_import(tree_copy: Path, where: str, line: str, contract: str) -> None:
    (tree_copy / where).write_text(f"{line}\n")
    res = _lint_imports(tree_copy)
    assert res.returncode != 0, res.stdout
    module = where.removesuffix(".py").replace("/", ".")
    broken = res.stdout.split("Broken contracts", 1)[-1]
    assert module in broken and contract in broken, res.stdout


def test_app_code_never_touches_driver_internals() -> None:
    """No dynamic import, simulator module name or driver-private attribute anywhere in app/."""
    assert scan_app() == []


def test_the_drivers_private_state_is_what_the_scan_looks_for() -> None:
    names = driver_private_names()
    assert {"_SimulatedDriver__fleet", "_SimulatedDriver__truth", "_SimulatedDriver__arrays"} <= names
    assert {"_die", "_charge", "_hidden_die", "_config"} <= names


LEAKS = {
    # (b) dynamic imports and strings naming the oracle
    "importlib": 'import importlib\noracle = importlib.import_module("hardware.sim.oracle")\n',
    "__import__": 'm = __import__("hardware.sim.oracle", fromlist=["x"])\n',
    "computed name": 'import importlib\nm = importlib.import_module(".".join(["hardware", "sim", "oracle"]))\n',
    "string": 'TRUTH = "hardware.sim.oracle:oracle_die_truth"\n',
    "getattr string": 'def f(d: object) -> object:\n    return getattr(d, "_SimulatedDriver__fleet")\n',
    # (c) attribute access into driver internals
    "driver.fleet.die": "def f(driver: object, addr: object) -> object:\n    return driver.fleet.die(addr)\n",
    "driver._fleet": "def f(driver: object) -> object:\n    return driver._SimulatedDriver__fleet\n",
    "driver._die": "def f(driver: object) -> object:\n    return driver._die\n",
    "hidden die": "def f(fleet: object, a: object) -> object:\n    return fleet._hidden_die(a)\n",
    "__dict__": "def f(driver: object) -> object:\n    return driver.__dict__\n",
    "vars": "def f(driver: object) -> object:\n    return vars(driver)\n",
    "swap": "def f(driver: object, other: object) -> None:\n    driver.swap_fleet(other)\n",
    "getattribute": "def f(d: object, n: str) -> object:\n    return object.__getattribute__(d, n)\n",
    "gc": "import gc\n\ndef f(d: object) -> object:\n    return gc.get_referents(d)\n",
}


@pytest.mark.parametrize("form", sorted(LEAKS))
def test_each_leak_form_in_app_code_is_caught(form: str, tree_copy: Path) -> None:
    (tree_copy / "app/services/leak.py").write_text(LEAKS[form])
    found = scan_app(tree_copy)
    assert found and all(f.startswith("app/services/leak.py:") for f in found), found


def test_own_private_state_and_docstrings_are_not_leaks() -> None:
    source = (
        '"""Never import hardware.sim.oracle from here."""\n'
        "class Site:\n"
        "    def __init__(self) -> None:\n"
        "        self._die = None\n"
        "    def probe(self) -> object:\n"
        "        return self._die\n"
    )
    assert scan_source(source, "app/services/site.py", driver_private_names()) == []

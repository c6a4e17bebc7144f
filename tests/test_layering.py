"""The import contract of docs/CONTRACT.md and shared/docs/style.md, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for f in _files(package):
        for name in _imports(f):
            if any(name == p or name.startswith(p + ".") for p in forbidden):
                out.append(f"{f.relative_to(ROOT)} imports {name}")
    return out


def test_hardware_never_imports_app() -> None:
    assert _violations("hardware", ("app",)) == []


@pytest.mark.parametrize("package", ["app/calibration", "app/nn"])
def test_numerics_import_no_web_framework_nor_database(package: str) -> None:
    if not (ROOT / package).exists():
        pytest.skip(f"{package} not present")
    assert _violations(package, ("fastapi", "starlette", "sqlalchemy", "pydantic", "app.db", "app.api")) == []


def test_nothing_that_serves_a_chip_reads_the_oracle() -> None:
    """Ground truth of the simulator is for tests and benchmarks: app/ never imports it."""
    assert _violations("app", ("hardware.sim.oracle",)) == []
    assert _violations("app", ("hardware.sim.variation",)) == []


def test_routers_run_no_sql() -> None:
    if not (ROOT / "app/api").exists():
        pytest.skip("app/api not present")
    assert _violations("app/api", ("sqlalchemy",)) == []

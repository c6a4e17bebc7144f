"""Every figure in docs/ names the command that produces it: the commands exist, the data they
wrote is committed where the docs say so, and no machine path stands in for either."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:tmp|home|root|work|Users|mnt)/")
BENCH_COMMAND = re.compile(r"`(?:python -m bench\.|cimcal bench )([a-z_]+)([^`]*)`", re.DOTALL)
DATA_FILE = re.compile(r"docs/data/[\w.-]+\.json")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_machine_paths(page: Path) -> None:
    hits = [
        f"{page.name}:{n}: {line.strip()}"
        for n, line in enumerate(page.read_text().splitlines(), 1)
        if MACHINE_PATH.search(line)
    ]
    assert hits == []


def _commands() -> list[tuple[str, str, str]]:
    return [
        (page.name, m.group(1), " ".join(m.group(2).split()))
        for page in PAGES
        for m in BENCH_COMMAND.finditer(page.read_text())
    ]


def test_docs_name_bench_commands() -> None:
    assert len(_commands()) >= 10  # the scan finds the commands it checks


@pytest.mark.parametrize(("page", "name", "args"), _commands(), ids=lambda v: str(v)[:40])
def test_every_bench_command_in_the_docs_exists_with_its_options(page: str, name: str, args: str) -> None:
    source = ROOT / "bench" / f"{name}.py"
    assert source.exists(), f"{page}: bench/{name}.py does not exist"
    text = source.read_text()
    missing = [opt for opt in re.findall(r"(?<!\S)(--[a-z][a-z-]*)", args) if f'"{opt}"' not in text]
    assert missing == [], f"{page}: `{name}` has no option {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_data_files_the_docs_cite_are_committed(page: Path) -> None:
    cited = set(DATA_FILE.findall(page.read_text()))
    assert [c for c in sorted(cited) if not (ROOT / c).is_file()] == []

"""``cimcal drivers list`` and ``cimcal drivers check``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import main
from tests.hardware.plugins import registered


@pytest.fixture
def plugins(tmp_path: Path) -> Iterator[Path]:
    with registered(tmp_path / "site") as site:
        yield site


def test_list_shows_versions_options_and_broken_plugins(
    plugins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["drivers", "list"]) == 0
    out = capsys.readouterr().out
    assert "simulated " in out and "p_timeout: number = 0.0" in out
    assert "keyed 3.1.4  (tests.hardware.plugins:KeyedDriver)" in out
    assert "api_key: string secret required" in out
    assert "misnamed  BROKEN: TypeError: entry point 'misnamed' loads a driver named 'keyed'" in out
    assert main(["drivers", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    by_name = {d["name"]: d for d in listed["drivers"]}
    assert by_name["keyed"]["options"]["required"] == ["api_key"] and "misnamed" in listed["broken"]


def test_check_passes_every_step_with_timings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drivers", "check", "simulated", "--site", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("driver simulated ") and ", site 1," in out
    for step in ("options", "build", "connect", "info", "geometry", "probe", "identify", "write/read"):
        assert f"ok   {step}" in out
    assert "median code step" in out and " ms " in out and out.rstrip().splitlines()[-1].startswith("passed")


@pytest.mark.parametrize(
    ("options", "failing", "detail"),
    [
        ('{"p_timeout": 2}', "options", "p_timeout: Input should be less than or equal to 1"),
        ('{"p_gross_defect": 1.0}', "probe", "DieFault"),
        ('{"p_timeout": 1.0}', "probe", "HardwareTimeoutError"),
    ],
)
def test_check_fails_at_the_broken_step(
    capsys: pytest.CaptureFixture[str], options: str, failing: str, detail: str
) -> None:
    assert main(["drivers", "check", "simulated", "--options", options]) == 1
    out = capsys.readouterr().out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("  FAIL ")]
    assert f"FAIL {failing}" in line and detail in line
    assert out.rstrip().splitlines()[-1].startswith("FAILED")


def test_check_of_a_plugin_masks_its_secret(plugins: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["drivers", "check", "keyed", "--options", '{"api_key": "hunter2"}', "--resource", "10.0.0.5:5025"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "resource 10.0.0.5:5025" in out and "Keyed Instruments K-1, serial K1-10.0.0.5:5025" in out
    assert '"api_key": "**********"' in out and "hunter2" not in out


def test_check_refuses_options_that_are_not_a_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drivers", "check", "simulated", "--options", "[1]"]) == 2
    assert main(["drivers", "check", "simulated", "--options", "{nope"]) == 2
    assert "--options" in capsys.readouterr().err

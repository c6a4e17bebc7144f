"""The quality benchmark on a driver other than the simulated fleet: options, rows, report."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.calibration.signature import Signature
from bench.oracle import oracle_for
from bench.quality import _row_scales, _simulated_option, default_settings
from bench.quality_dies import DriverSpec
from bench.quality_report import METHODS, render_section, summarize, write_figure, write_markdown
from hardware.driver import DieAddress
from hardware.registry import DriverOptionsError
from hardware.sim.corners import CORNERS
from hardware.sim.driver import SimulatedDriver
from hardware.sim.oracle import oracle_fleet_config
from tests.vendor_driver.driver import VendorDriver


def test_the_simulated_spec_scales_the_variation_and_seeds_each_die() -> None:
    spec = DriverSpec()
    assert spec.die_options(3.5, 2) == {
        "fleet_seed": 2022,
        "variation_scale": 3.5,
        "noise_seed": 1002,
        "default_timeout_s": 3600.0,
    }
    assert _row_scales(spec, None, (2.5, 5.5)) == (2.5, 5.5)
    drv = spec.build(2.5, 0)
    assert isinstance(drv, SimulatedDriver) and oracle_fleet_config(drv).variation.variation_scale == 2.5


def test_a_spec_without_a_scale_option_has_one_row() -> None:
    spec = DriverSpec("simulated", {"variation_scale": 2.0}, None)
    assert _row_scales(spec, None, (2.5, 5.5)) == (None,)
    assert spec.die_options(None, 0)["variation_scale"] == 2.0
    with pytest.raises(ValueError, match="--scale-option"):
        _row_scales(spec, (1.0,), (2.5,))


def test_bad_driver_options_are_refused_before_any_die_runs() -> None:
    with pytest.raises(DriverOptionsError, match="nope"):
        DriverSpec("simulated", {"nope": 1})
    with pytest.raises(ValueError, match="no option 'nope'"):
        DriverSpec("simulated", {}, "nope")


def test_the_simulated_fleet_runs_one_row_per_named_corner_by_default() -> None:
    assert _simulated_option(None) == "corner" and _simulated_option([2.5]) == "variation_scale"
    spec = DriverSpec("simulated", {}, "corner")
    assert default_settings(spec) == tuple(CORNERS) and len(CORNERS) >= 3
    assert _row_scales(spec, None, default_settings(spec)) == tuple(CORNERS)
    assert spec.die_options("slow", 1)["corner"] == "slow"
    assert spec.build("aggressive", 0).info().extra["corner"] == "aggressive"
    with pytest.raises(ValueError, match="unknown process corner"):
        spec.build("nope", 0)


def test_only_a_driver_that_offers_one_has_an_oracle() -> None:
    sim = SimulatedDriver()
    oracle = oracle_for(sim)
    assert oracle is not None and oracle(DieAddress("L", 1, 0, 0)).meta["source"] == "ORACLE"
    assert oracle_for(VendorDriver()) is None

    class VendorSimulator(VendorDriver):
        def oracle_signature(self, address: DieAddress) -> Signature:
            raise NotImplementedError

    offering = VendorSimulator()
    assert oracle_for(offering) == offering.oracle_signature


def _record(die: int, acc: float) -> dict[str, object]:
    rec: dict[str, object] = {m: acc for m in METHODS if m != "oracle"}
    rec.update(
        scale=None,
        die=die,
        uncalibrated=acc / 2,
        read_vectors=131072,
        reads=64,
        writes=64,
        characterize_tester_s=0.44,
        characterize_compute_s=0.5,
        compensate_s=0.07,
        signature_bytes=288_000,
        functional_tester_s=0.08,
        cimcal_functional_tester_s=0.08,
        predicted_agreement=0.99,
        n_dead_cols=1,
        n_stuck_cells=3,
        calibratable=True,
    )
    return rec


def test_a_run_without_oracle_and_scales_reports_one_row_without_an_oracle_column(tmp_path: Path) -> None:
    rows = summarize([_record(d, 0.96) for d in range(2)], ideal=0.98)
    assert len(rows) == 1 and rows[0]["scale"] is None and "oracle" not in rows[0]
    result = {
        "config": {
            "command": "python -m bench.quality --driver vendor",
            "workers": 1,
            "model": "m@1",
            "software_accuracy": 0.98,
            "ideal_accuracy": 0.98,
            "test_clips": 450,
            "calib_clips": 269,
            "tune_clips": 120,
            "budget": 131072,
            "budget_scale": None,
            "n_macros": 32,
            "figure": "q-vendor.png",
            "driver": {
                "name": "vendor",
                "version": "0.1.0",
                "options": {"corner": 2.5},
                "scale_option": None,
            },
        },
        "summary": rows,
        "budget_curve": [],
        "elapsed_s": 30.0,
    }
    text = "\n".join(render_section(result))
    assert "## `m@1 on vendor`" in text and "offers no oracle" in text
    assert (
        "| configuration | dies | ideal chip | uncalibrated | A: offset only | B: two-point trim | fine-tuning | cimcal |\n"
        in text
    )
    assert "| - | 2 | 98.0 | 48.0 / 48.0 |" in text
    md, png = tmp_path / "q.md", tmp_path / "q.png"
    md.write_text(
        "# Calibration quality benchmark\n\n<!-- bench.quality: m@1 -->\nsimulated\n<!-- /bench.quality: m@1 -->\n"
    )
    write_markdown(result, md)
    kept = md.read_text()
    assert "simulated" in kept and "<!-- bench.quality: m@1 on vendor -->" in kept
    write_figure(result, png)
    assert png.stat().st_size > 10_000

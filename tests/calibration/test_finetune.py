"""Per-chip threshold fine-tuning (app.calibration.finetune) and its die-in-the-loop run (bench.finetune)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray

from app.calibration.baselines import uncalibrated_image
from app.calibration.characterize import characterize
from app.calibration.finetune import FinetuneConfig, fit_surrogate, measure_pass, train_thresholds
from bench.finetune import finetune_on_die
from hardware.chip import NetworkProgram, Readout, WeightImage, execute_network, ideal_readout
from hardware.sim.driver import SimulatedDriver
from tests.calibration.conftest import SMALL, SMALL_BUDGET

Tiny = tuple[NetworkProgram, NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]]


def _offset_die(image: WeightImage, offset_code: NDArray[np.float64]) -> Readout:
    """A die whose every bit line reads ``offset_code`` (n_macros, phys_cols) codes high."""
    ideal = ideal_readout(image.macros, SMALL)

    def read(macro: int, inputs: NDArray[np.uint8]) -> NDArray[np.int16]:
        codes = ideal(macro, inputs).astype(np.int32) + offset_code[macro].astype(np.int32)
        return np.clip(codes, SMALL.code_min, SMALL.code_max).astype(np.int16)

    return read


def _accuracy(image: WeightImage, readout: Readout, x: NDArray[np.float32], y: NDArray[np.int64]) -> float:
    return float((execute_network(image, x, readout).argmax(axis=1) == y).mean())


def test_fine_tuning_recovers_a_die_with_a_known_column_offset(tiny: Tiny) -> None:
    """Offsets of -4..4 codes per bit line cost the uncalibrated image most of its accuracy; one
    round (measure, fit, train) on a calibration set gets it back on other inputs."""
    program, calib, test, labels = tiny
    image = uncalibrated_image(program, SMALL)
    offset = (
        np.random.default_rng(5).integers(-4, 5, size=(SMALL.n_macros, SMALL.phys_cols)).astype(np.float64)
    )
    die = _offset_die(image, offset)
    calib_labels = execute_network(image, calib, ideal_readout(image.macros, SMALL)).argmax(axis=1)
    teacher = execute_network(image, calib, ideal_readout(image.macros, SMALL))
    before = _accuracy(image, die, test, labels)
    rng = np.random.default_rng(0)
    die_pass = measure_pass(image, calib, die, rng=rng)
    surrogate = fit_surrogate(image, program, die_pass)
    for layer in program.binary_layers():  # the fitted offsets are the die's, summed over the tiles
        tiles = [t for t in image.tiles if t.layer == layer.name]
        truth = np.zeros(layer.n_out)
        for t in tiles:
            truth[t.col_start : t.col_start + t.n_cols] += offset[t.macro, : t.n_cols]
        assert np.abs(surrogate[layer.name].offset - truth).max() < 1.0
    thr = train_thresholds(
        program,
        surrogate,
        calib,
        calib_labels,
        teacher,
        config=FinetuneConfig(steps=150, batch=16),
        rng=rng,
    )
    tuned = _accuracy(WeightImage(**{**image.__dict__, "thresholds": thr}), die, test, labels)
    assert before < 0.75 and tuned > before + 0.15 and tuned >= 0.85, (before, tuned)


@pytest.fixture
def no_oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any use of the simulator's hidden truth outside the driver fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("fine-tuning read the ORACLE")

    import bench.oracle
    import hardware.sim.oracle

    monkeypatch.setattr(hardware.sim.oracle, "oracle_die_truth", refuse)
    monkeypatch.setattr(bench.oracle, "oracle_signature", refuse)
    monkeypatch.setattr(bench.oracle, "oracle_die_truth", refuse)


def test_fine_tuning_on_a_simulated_die_stays_within_its_tester_budget(
    tiny: Tiny, make_driver: Callable[..., SimulatedDriver], no_oracle: None
) -> None:
    program, calib, _, _ = tiny
    drv = make_driver(3.0)
    image = uncalibrated_image(program, SMALL)
    teacher = execute_network(image, calib, ideal_readout(image.macros, SMALL))
    char = characterize(drv, budget=SMALL_BUDGET, rng=0)
    budget = 10 * char.tester_s
    run = finetune_on_die(
        drv,
        program,
        image,
        calib,
        teacher.argmax(axis=1),
        teacher,
        tester_budget_s=budget,
        config=FinetuneConfig(steps=40, batch=16),
        rng=np.random.default_rng(1),
    )
    assert run.passes >= 2 and 0 < run.tester_s <= budget
    assert run.tune_accuracy >= run.start_accuracy
    assert set(run.image.thresholds) == {layer.name for layer in program.binary_layers()}


def test_the_fine_tuning_module_does_not_import_the_simulator() -> None:
    code = (
        "import sys, app.calibration.finetune, bench.finetune; "
        "print(sorted(m for m in sys.modules if m.startswith('hardware.sim')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""Functional test and the bin table."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray

from app.calibration.baselines import uncalibrated_image
from app.calibration.functional import GRADE_TABLE, calibratable, functional_test, grade
from hardware.chip import NetworkProgram, encode_image
from hardware.sim.driver import SimulatedDriver
from tests.calibration.conftest import SMALL

Tiny = tuple[NetworkProgram, NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]]


@pytest.mark.parametrize(
    ("accuracy", "expected"),
    [
        (0.99, (1, 1, "PASS_GRADE_A")),
        (0.85, (1, 1, "PASS_GRADE_A")),
        (0.8499, (1, 2, "PASS_GRADE_B")),
        (0.80, (1, 2, "PASS_GRADE_B")),
        (0.76, (1, 3, "PASS_GRADE_C")),
        (0.70, (1, 4, "PASS_GRADE_D")),
        (0.6999, (2, 10, "FAIL_ACCURACY")),
        (0.0, (2, 10, "FAIL_ACCURACY")),
        (None, (2, 10, "FAIL_ACCURACY")),
        (float("nan"), (2, 10, "FAIL_ACCURACY")),
    ],
)
def test_accuracy_grades(accuracy: float | None, expected: tuple[int, int, str]) -> None:
    hard, soft, label = grade(accuracy)
    assert (hard, soft, label) == expected
    assert grade(accuracy).passed == (soft < 10)


def test_verdicts_override_accuracy_in_order() -> None:
    assert grade(0.99, calibratable=False) == (3, 11, "FAIL_NOT_CALIBRATABLE")
    assert grade(0.99, gross_defect=True, calibratable=False) == (4, 12, "FAIL_GROSS_DEFECT")
    assert grade(0.99, tester_alarm=True, gross_defect=True) == (0, 0, "TESTER_ALARM")
    assert not grade(0.99, tester_alarm=True).passed


def test_table_is_consistent() -> None:
    soft = [r.soft_bin for r in GRADE_TABLE]
    assert len(set(soft)) == len(soft)
    passes = [r for r in GRADE_TABLE if r.min_accuracy is not None]
    assert all(1 <= r.soft_bin <= 9 and r.hard_bin == 1 for r in passes)
    assert [r.min_accuracy for r in passes] == sorted((r.min_accuracy for r in passes), reverse=True)
    assert all(r.soft_bin >= 10 or r.soft_bin == 0 for r in GRADE_TABLE if r.min_accuracy is None)


def test_calibratable_limits() -> None:
    assert calibratable(0, 0, 0, n_cols=1000, n_cells=10**6) == (True, "")
    assert not calibratable(0, 0, 1, n_cols=1000, n_cells=10**6)[0]
    assert not calibratable(51, 0, 0, n_cols=1000, n_cells=10**6)[0]
    assert not calibratable(0, 10_001, 0, n_cols=1000, n_cells=10**6)[0]


def test_functional_test_measures_accuracy_and_tester_time(
    tiny: Tiny, make_driver: Callable[..., SimulatedDriver]
) -> None:
    program, _, test, labels = tiny
    # A perfect die (no variation, no read noise): labels are its predictions.
    drv = make_driver(0.0, dead_col_rate=0.0, stuck_cell_rate=0.0, read_noise_sigma_mac=0.0)
    drv.reset_counters()
    res = functional_test(drv, encode_image(uncalibrated_image(program, SMALL)), test, labels, batch=40)
    assert res.accuracy == 1.0 and res.n == len(labels) == res.n_correct
    np.testing.assert_array_equal(res.predictions, labels)
    t = drv.timing
    n_macros = len({tl.macro for tl in uncalibrated_image(program, SMALL).tiles})
    calls = -(-len(labels) // 40)
    expected = (
        t.program_setup_s
        + n_macros * t.write_macro_s
        + calls * t.inference_call_s
        + len(labels) * t.inference_vector_s
    )
    assert res.tester_s == pytest.approx(expected) == pytest.approx(drv.tester_time_s)
    with pytest.raises(ValueError):
        functional_test(drv, encode_image(uncalibrated_image(program, SMALL)), test, labels[:-1])

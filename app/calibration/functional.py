"""Functional test and binning: program a die's image, run a labelled set through it, grade it.

Binning (one table, :data:`GRADE_TABLE`; soft bins 1-9 pass, 1 best; 10+ fail; 0 tester alarm).
The pass grades below are the default; a model may declare its own (``pass_grades``: soft bins
1-9 with its own limits and labels, e.g. relative to its ideal-chip accuracy):

=========  ========  ===================  ==================================================
soft bin   hard bin  label                condition
=========  ========  ===================  ==================================================
1          1         PASS_GRADE_A         accuracy >= 85 %
2          1         PASS_GRADE_B         accuracy >= 80 %
3          1         PASS_GRADE_C         accuracy >= 75 %
4          1         PASS_GRADE_D         accuracy >= 70 %
10         2         FAIL_ACCURACY        accuracy below the lowest pass grade
11         3         FAIL_NOT_CALIBRATABLE  characterization found more defects than the
                                          spares repair (a used column left on a dead bit
                                          line, or defect counts over the limits below)
12         4         FAIL_GROSS_DEFECT    die fault (shorts, no response)
0          0         TESTER_ALARM         tester or environment alarm: retest, not a die verdict
=========  ========  ===================  ==================================================

The first matching row wins, in the order alarm, gross defect, not calibratable, pass grades,
low accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from app.calibration.transient import DEFAULT_ATTEMPTS, RetryingCalls
from hardware.driver import Driver


class GradeRule(NamedTuple):
    soft_bin: int
    hard_bin: int
    label: str
    min_accuracy: float | None  # pass grades only


GRADE_TABLE: tuple[GradeRule, ...] = (
    GradeRule(1, 1, "PASS_GRADE_A", 0.85),
    GradeRule(2, 1, "PASS_GRADE_B", 0.80),
    GradeRule(3, 1, "PASS_GRADE_C", 0.75),
    GradeRule(4, 1, "PASS_GRADE_D", 0.70),
    GradeRule(10, 2, "FAIL_ACCURACY", None),
    GradeRule(11, 3, "FAIL_NOT_CALIBRATABLE", None),
    GradeRule(12, 4, "FAIL_GROSS_DEFECT", None),
    GradeRule(0, 0, "TESTER_ALARM", None),
)
"""Every bin the calibration flow assigns (see the module docstring for the conditions)."""

MAX_DEAD_COL_FRACTION = 0.05
"""A die with more dead bit lines than this fraction of all bit lines is not calibratable."""
MAX_STUCK_CELL_FRACTION = 0.01
"""A die with more stuck cells than this fraction of all cells is not calibratable."""

_BY_BIN = {rule.soft_bin: rule for rule in GRADE_TABLE}

DEFAULT_PASS_GRADES: tuple[GradeRule, ...] = tuple(r for r in GRADE_TABLE if r.min_accuracy is not None)
"""The pass grades of a model that declares no pass limits of its own."""


class Grade(NamedTuple):
    """``(hard_bin, soft_bin, label)``: unpacks as the triple the test flow records."""

    hard_bin: int
    soft_bin: int
    label: str

    @property
    def passed(self) -> bool:
        return 1 <= self.soft_bin <= 9


def _grade(soft_bin: int) -> Grade:
    rule = _BY_BIN[soft_bin]
    return Grade(rule.hard_bin, rule.soft_bin, rule.label)


def grade(
    accuracy: float | None,
    *,
    calibratable: bool = True,
    gross_defect: bool = False,
    tester_alarm: bool = False,
    pass_grades: Sequence[GradeRule] = DEFAULT_PASS_GRADES,
) -> Grade:
    """The bin of a die (see :data:`GRADE_TABLE`); ``accuracy`` in [0, 1], None when not measured.

    ``pass_grades``: the model's own pass grades (soft bins 1-9, best first, absolute limits).
    """
    if tester_alarm:
        return _grade(0)
    if gross_defect:
        return _grade(12)
    if not calibratable:
        return _grade(11)
    if accuracy is None or not np.isfinite(accuracy):
        return _grade(10)
    for rule in pass_grades:
        if rule.min_accuracy is not None and accuracy >= rule.min_accuracy:
            return Grade(rule.hard_bin, rule.soft_bin, rule.label)
    return _grade(10)


def calibratable(
    n_dead_cols: int, n_stuck_cells: int, unrepaired_dead_cols: int, *, n_cols: int, n_cells: int
) -> tuple[bool, str]:
    """Whether compensation could repair the die, with the reason when it could not."""
    if unrepaired_dead_cols > 0:
        return False, f"{unrepaired_dead_cols} used column(s) on dead bit lines with no free spare"
    if n_dead_cols > MAX_DEAD_COL_FRACTION * n_cols:
        return False, f"{n_dead_cols} dead bit lines (limit {MAX_DEAD_COL_FRACTION:.0%} of {n_cols})"
    if n_stuck_cells > MAX_STUCK_CELL_FRACTION * n_cells:
        return False, f"{n_stuck_cells} stuck cells (limit {MAX_STUCK_CELL_FRACTION:.0%} of {n_cells})"
    return True, ""


@dataclass(frozen=True)
class FunctionalResult:
    """Outcome of a functional test.

    accuracy    : fraction of ``labels`` predicted correctly; n: clips run; n_correct
    predictions : (n,) int64 predicted class per clip
    tester_s    : tester seconds charged for programming the image and running the clips
    wall_s      : host seconds the whole test took
    retries     : driver calls repeated after a transient error
    """

    accuracy: float
    n: int
    n_correct: int
    predictions: NDArray[np.int64]
    tester_s: float
    wall_s: float
    retries: int = 0


def functional_test(
    driver: Driver,
    image_bytes: bytes,
    features: NDArray[np.float32],
    labels: NDArray[np.integer],
    *,
    batch: int = 256,
    attempts: int = DEFAULT_ATTEMPTS,
) -> FunctionalResult:
    """Program ``image_bytes`` into the die under the probe and run ``features`` (N, *input) float32
    in batches of ``batch`` through :meth:`Driver.run_network`.

    A transient driver error retries the one program or run call (``attempts`` tries; after a lost
    contact the die is probed again and the image programmed again first); other driver errors, and
    the last try's, propagate.
    """
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels).astype(np.int64)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"{x.shape[0]} feature maps for {y.shape[0]} labels: need equal, non-zero counts")
    if batch <= 0:
        raise ValueError("batch must be positive")
    t0, s0 = time.perf_counter(), driver.tester_time_s
    calls = RetryingCalls(driver, driver.identify().address, attempts=attempts)
    program = partial(driver.program_image, image_bytes)
    calls.call(program)
    preds = np.concatenate(
        [
            calls.call(partial(driver.run_network, x[i : i + batch]), restore=program).argmax(axis=1)
            for i in range(0, x.shape[0], batch)
        ]
    )
    correct = int((preds == y).sum())
    return FunctionalResult(
        accuracy=correct / y.shape[0],
        n=int(y.shape[0]),
        n_correct=correct,
        predictions=preds.astype(np.int64),
        tester_s=driver.tester_time_s - s0,
        wall_s=time.perf_counter() - t0,
        retries=calls.retries,
    )

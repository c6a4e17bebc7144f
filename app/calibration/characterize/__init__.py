"""Characterization: measure a die's :class:`~app.calibration.signature.Signature` through the driver.

Design (the same for every macro, so one factorisation serves the whole die):

* Two weight patterns per macro: a random balanced ``W`` (rows, phys_cols) in {-1,+1} (every column
  half +1, half -1) and its complement ``-W``. Every macro is written with ``W``, read, then written
  with ``-W`` and read with *the same* input vectors.
* Input vectors: blocks that split the rows into ``1/active_fraction`` random groups, one group per
  vector (a balanced design: every row is driven equally often, ideal sums stay well inside the ADC
  range). The first ``repeat_fraction`` of the vectors are read twice (noise estimate).

With codes ``y+`` (pattern W) and ``y-`` (pattern -W) and the linear readout model of the signature,

* ``h = (y+ - y-) / 2 = A (W o c) + noise``: the healthy cells' contributions ``c = g (1 + e)``;
  a column-level regression on the ideal sums gives the gain, a ridge regression (prior: cell
  errors of spread ``cell_sigma``, estimated from the data) gives per-cell errors when the budget
  resolves them;
* ``z = (y+ + y-) / 2 = offset + A d + noise``: healthy cells cancel, a stuck cell adds
  ``d = value * magnitude`` whatever was written, so a sparse matched filter on ``z`` finds stuck
  cells (MAP test against a prior stuck rate) and the intercept is the column offset;
* repeated vectors give the read noise; a probit fit of ``[code >= k]`` against the predicted analog
  value gives the ADC edge positions; a column whose code never changes is dead.

A degenerate bit line (zero or negative gain, random codes, mostly on a rail, a singular fit,
non-finite estimates) never raises: it is marked unusable with its reason (:data:`UNUSABLE_REASONS`),
recorded as dead, and the die is fitted again without it; the signature is always finite. Stuck
cells are confirmed beyond the MAP test (``stuck_min_z``, ``stuck_mag_range``) and the candidate and
confirmed counts are reported (``summary()``, ``signature.meta["stuck"]``).

Every macro is written and then read before the next one is written. A transient hardware error
(timeout, contact loss) retries the one write or read that failed, up to ``config.attempts`` tries,
re-probing the die and rewriting the macro's pattern after a lost contact
(:mod:`app.calibration.transient`); the retries are counted in the result. When a call still fails,
the error propagates and nothing is returned: no partial signature is ever measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.calibration.characterize.adc import noise_sigma_from_repeat_var
from app.calibration.characterize.config import (
    DEFAULT_BUDGET,
    MIN_VECTORS_PER_PATTERN,
    UNUSABLE_REASONS,
    CharacterizationConfig,
)
from app.calibration.characterize.design import (
    Design,
    DesignMatrices,
    design_matrices,
    make_design,
    production_design,
    vectors_per_pattern,
)
from app.calibration.characterize.estimate import build_signature, estimate_signature, fit_die, refit_stuck
from app.calibration.characterize.measure import measure
from app.calibration.characterize.stuck import confirm_by_rereads
from app.calibration.signature import Signature
from app.calibration.transient import RetryingCalls
from hardware.driver import Driver

__all__ = [
    "DEFAULT_BUDGET",
    "MIN_VECTORS_PER_PATTERN",
    "UNUSABLE_REASONS",
    "CharacterizationConfig",
    "CharacterizationResult",
    "Design",
    "DesignMatrices",
    "characterize",
    "design_matrices",
    "estimate_signature",
    "make_design",
    "measure",
    "noise_sigma_from_repeat_var",
    "production_design",
    "vectors_per_pattern",
]


@dataclass(frozen=True)
class CharacterizationResult:
    """A signature and what it cost on the tester.

    reads        : read_macro calls; read_vectors: word-line vectors driven (the budget unit)
    writes       : macros written; write_calls: write operations (a broadcast write writes many
                   macros in one); tester_s: tester seconds charged by the driver
    compute_s    : host seconds spent estimating (not tester time, nor the driver's own calls);
                   compute_cpu_s: the CPU seconds of the same (the host cost, whatever else runs)
    retries      : driver calls repeated after a transient error (their cost is in the figures above)
    """

    signature: Signature
    reads: int
    read_vectors: int
    writes: int
    tester_s: float
    compute_s: float
    budget: int
    diagnostics: dict[str, float] = field(default_factory=dict)
    retries: int = 0
    write_calls: int = 0
    compute_cpu_s: float = 0.0

    def summary(self) -> dict[str, float | int]:
        """Signature headline numbers plus the cost of measuring them."""
        out: dict[str, float | int] = dict(self.signature.summary())
        out.update(
            {
                "reads": self.reads,
                "read_vectors": self.read_vectors,
                "writes": self.writes,
                "write_calls": self.write_calls,
                "tester_s": self.tester_s,
                "compute_s": self.compute_s,
                "budget": self.budget,
                "retries": self.retries,
            }
        )
        for key in ("n_unusable_cols", "stuck_candidates", "stuck_confirmed", "stuck_score_min"):
            if key in self.diagnostics:
                out[key] = self.diagnostics[key]
        return out


def characterize(
    driver: Driver,
    *,
    budget: int = DEFAULT_BUDGET,
    rng: np.random.Generator | int | None = None,
    config: CharacterizationConfig | None = None,
) -> CharacterizationResult:
    """Measure the signature of the die under the probe with ``budget`` read vectors.

    Writes both patterns into every macro (:func:`measure`) and reads each macro with
    ``budget / (2 n_macros)`` vectors per pattern; with ``config.reread_stuck`` the suspected stuck
    cells are then read again (a few vectors each, :mod:`app.calibration.characterize.stuck`).
    ``rng``: a seed or generator draws a design for this call; None (production) uses the design of
    ``config.design_seed``, the same for every die and precomputed once per geometry and budget.

    A :class:`~hardware.driver.HardwareTimeoutError` or :class:`~hardware.driver.ContactError`
    retries the failed call (``config.attempts`` tries); when the last try fails it propagates, as does
    any other driver error; no partial signature is ever returned.
    """
    config = config or CharacterizationConfig()
    g = driver.geometry()
    n = vectors_per_pattern(g, budget)
    if rng is None:
        design, dm = production_design(
            g, n, config.active_fraction, config.repeat_fraction, config.design_seed
        )
    else:
        design = make_design(g, n, np.random.default_rng(rng), config)
        dm = design_matrices(design, g)
    c0 = driver.counters.as_dict()
    ident = driver.identify()
    calls = RetryingCalls(driver, ident.address, attempts=config.attempts)
    y_pos, y_neg = measure(driver, design, config, calls)
    t0, c0_cpu = time.perf_counter(), time.thread_time()
    df = fit_die(g, design, dm, y_pos, y_neg, config, resolve_cells=not config.reread_stuck)
    compute_s, cpu_s = time.perf_counter() - t0, time.thread_time() - c0_cpu
    if config.reread_stuck:
        suspects = df.test.suspects
        stuck = confirm_by_rereads(
            driver, calls, design, suspects, df.fit.gain, df.fit.offset, df.sigma_m, config, budget
        )
        t1, c1_cpu = time.perf_counter(), time.thread_time()
        df = refit_stuck(df, stuck, config)
        compute_s, cpu_s = compute_s + time.perf_counter() - t1, cpu_s + time.thread_time() - c1_cpu
    c1 = driver.counters.as_dict()
    t2, c2_cpu = time.perf_counter(), time.thread_time()
    meta: dict[str, Any] = {"ecid": ident.ecid, "budget": int(budget), "vectors_per_pattern": int(n)}
    signature, diag = build_signature(g, design, dm, df, config, meta)
    compute_s, cpu_s = compute_s + time.perf_counter() - t2, cpu_s + time.thread_time() - c2_cpu
    return CharacterizationResult(
        signature=signature,
        reads=int(c1["read_calls"] - c0["read_calls"]),
        read_vectors=int(c1["read_vectors"] - c0["read_vectors"]),
        writes=int(c1["macro_writes"] - c0["macro_writes"]),
        tester_s=float(c1["tester_time_s"] - c0["tester_time_s"]),
        compute_s=compute_s,
        budget=int(budget),
        diagnostics=diag,
        retries=calls.retries,
        write_calls=int(c1["write_calls"] - c0["write_calls"]),
        compute_cpu_s=cpu_s,
    )

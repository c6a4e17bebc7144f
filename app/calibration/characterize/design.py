"""Test patterns: the written weight pattern and the input vectors, the same for every macro."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from app.calibration.characterize.config import MIN_VECTORS_PER_PATTERN, CharacterizationConfig
from hardware.chip import ChipGeometry


@dataclass(frozen=True)
class Design:
    """Test patterns: ``weights`` (rows, phys_cols) int8, ``inputs`` (n, rows) uint8, repeats of the
    first ``n_repeat`` vectors appended at the end (so ``inputs[-n_repeat:] == inputs[:n_repeat]``)."""

    weights: NDArray[np.int8]
    inputs: NDArray[np.uint8]
    n_repeat: int

    @property
    def n(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def n_distinct(self) -> int:
        return self.n - self.n_repeat


def vectors_per_pattern(geometry: ChipGeometry, budget: int) -> int:
    """Input vectors per macro and pattern that a budget of ``budget`` read vectors per die buys."""
    n = budget // (2 * geometry.n_macros)
    if n < MIN_VECTORS_PER_PATTERN:
        raise ValueError(
            f"budget {budget} read vectors is too small: at least "
            f"{2 * geometry.n_macros * MIN_VECTORS_PER_PATTERN} for {geometry.n_macros} macros"
        )
    return int(n)


def make_design(
    geometry: ChipGeometry, n: int, rng: np.random.Generator, config: CharacterizationConfig
) -> Design:
    """A balanced random design of ``n`` vectors per pattern (see the module docstring)."""
    r, p = geometry.rows, geometry.phys_cols
    half = np.ones(r, np.int8)
    half[: r // 2] = -1
    weights = np.stack([rng.permutation(half) for _ in range(p)], axis=1)  # (r, p) balanced columns
    n_repeat = int(n * config.repeat_fraction)
    n_distinct = n - n_repeat
    groups = max(1, round(1.0 / config.active_fraction))
    inputs = np.zeros((n_distinct, r), np.uint8)
    for b0 in range(0, n_distinct, groups):
        label = rng.permutation(r) % groups
        for j in range(min(groups, n_distinct - b0)):
            inputs[b0 + j, label == j] = 1
    inputs = inputs[rng.permutation(n_distinct)]
    inputs = np.concatenate([inputs, inputs[:n_repeat]])
    return Design(weights=weights, inputs=inputs, n_repeat=n_repeat)


DESIGN_SEED = 2022
"""Seed of the production design: the test patterns are die-independent, so every die gets the same
ones (a fixed test program) and their precomputation is shared (:func:`production_design`)."""


@dataclass(frozen=True, eq=False)
class DesignMatrices:
    """What estimation needs of a design on a geometry, whatever the die (computed once per design).

    a       : (n, rows) float32 inputs; ``ac`` the same centred over the reads
    s_ideal : (n, n_macros * phys_cols) float32 ideal sums under W, the same for every macro
    s_c     : ``s_ideal`` centred per column; ``var_s`` (n_cols,) float64 its variance
    w_all   : (rows, n_cols) float32 the pattern W of every column
    row_energy : (rows,) float64 ``diag(ac.T ac)`` (the matched filter's normaliser)
    gram_evals, gram_evecs : eigen-decomposition of ``ac.T ac`` (ridge solves for any penalty)
    k_eff   : variance-weighted active rows per read
    """

    a: NDArray[np.float32]
    ac: NDArray[np.float32]
    s_ideal: NDArray[np.float32]
    s_c: NDArray[np.float32]
    var_s: NDArray[np.float64]
    w_all: NDArray[np.float32]
    row_energy: NDArray[np.float64]
    gram_evals: NDArray[np.float64]
    gram_evecs: NDArray[np.float64]
    k_eff: float


def design_matrices(design: Design, geometry: ChipGeometry) -> DesignMatrices:
    """The die-independent precomputation of ``design`` on ``geometry`` (see :class:`DesignMatrices`)."""
    m_ = geometry.n_macros
    a = design.inputs.astype(np.float32)
    a64 = a.astype(np.float64)
    ac64 = a64 - a64.mean(axis=0)
    gram = ac64.T @ ac64
    evals, evecs = np.linalg.eigh(gram)
    w = design.weights.astype(np.float32)
    s_one = a @ w
    s_c_one = s_one - s_one.mean(axis=0, dtype=np.float64).astype(np.float32)
    var_one = np.einsum("ij,ij->j", s_c_one, s_c_one, dtype=np.float64) / design.n
    return DesignMatrices(
        a=a,
        ac=ac64.astype(np.float32),
        s_ideal=np.tile(s_one, (1, m_)),
        s_c=np.tile(s_c_one, (1, m_)),
        var_s=np.tile(var_one, m_),
        w_all=np.tile(w, (1, m_)),
        row_energy=np.clip(np.diag(gram), 1e-9, None),
        gram_evals=np.clip(evals, 0.0, None),
        gram_evecs=evecs,
        k_eff=float(np.trace(gram)) / design.n,
    )


@lru_cache(maxsize=4)
def production_design(
    geometry: ChipGeometry, n: int, active_fraction: float, repeat_fraction: float, seed: int = DESIGN_SEED
) -> tuple[Design, DesignMatrices]:
    """The design of ``n`` vectors per pattern drawn from ``seed``, with its matrices: cached per
    geometry, budget and design knobs, so a station pays for them once, not once per die."""
    config = CharacterizationConfig(active_fraction=active_fraction, repeat_fraction=repeat_fraction)
    design = make_design(geometry, n, np.random.default_rng(seed), config)
    return design, design_matrices(design, geometry)

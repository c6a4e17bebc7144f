"""Test patterns: the written weight pattern and the input vectors, the same for every macro."""

from __future__ import annotations

from dataclasses import dataclass

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

"""Characterization knobs: the read budget, the estimator configuration and the unusable-column reasons."""

from __future__ import annotations

from dataclasses import dataclass

from app.calibration.transient import DEFAULT_ATTEMPTS

DEFAULT_BUDGET = 16_384
"""Default read vectors per die of the short pass (256 per macro and pattern on the default 32-macro
geometry): gain and offset are pinned well below the read noise by then, and more reads change no
accuracy beyond the run-to-run noise (the curve in docs/calibration.md, "Tester time", and the
budget sweep of docs/quality.md); stuck cells the short pass only suspects are read again."""

MIN_VECTORS_PER_PATTERN = 16


@dataclass(frozen=True)
class CharacterizationConfig:
    """Design and estimator knobs (defaults are the production setting).

    active_fraction : fraction of rows driven by each input vector
    repeat_fraction : fraction of the vectors read twice (read-noise estimate)
    stuck_prior     : prior probability that a cell is stuck (the short pass's MAP test); ``None``
                      (default): estimated from the die's own reads (empirical Bayes,
                      :func:`~app.calibration.characterize.stuck.stuck_fraction`)
    cells           : "auto" keeps per-cell errors when they explain at least ``min_cell_r2`` of the
                      cell-error variance; True always, False never
    edges           : estimate the ADC decision edges (from ``edge_reads`` vectors per pattern); off by
                      default: measured to change no decision (docs/calibration.md) and 137 kB per die
    edge_prior_sigma_lsb : spread of the N(0, s^2) prior on the edge offsets; ``None`` (default): the
                      spread of the die's own pooled edge estimates
                      (:func:`~app.calibration.characterize.adc._edge_prior_sigma`)
    max_vectors_per_call : split reads into driver calls of at most this many vectors
    attempts        : tries per driver call after a transient error (1: no retry)
    min_gain        : a bit line whose measured gain ratio is below this (zero, negative, or too
                      weak to regress) is unusable (see :data:`UNUSABLE_REASONS`) ...
    min_gain_t      : ... as is one whose gain is fewer than this many standard errors from 0
    min_valid_fraction : a bit line with fewer uncensored reads than this fraction is unusable
    max_noise_ratio : a bit line whose residual spread exceeds this multiple of the die's median
                      is unusable (erratic codes)
    stuck_min_z     : a stuck-cell candidate is confirmed only when its statistic is this many
                      standard errors from 0 ...
    stuck_mag_range : ... and its magnitude within this range of the column gain (a stuck cell adds
                      about one cell's contribution)
    broadcast       : write each pattern into every macro with one ``write_macros`` call (one
                      broadcast write on a tester that has it) and then read them; False: write and
                      read one macro at a time
    reread_stuck    : confirm stuck cells by targeted re-reads of the suspects instead of the short
                      pass's statistic alone (:mod:`app.calibration.characterize.stuck`)
    suspect_min_z   : a cell this many standard errors from 0 on the short pass is a suspect (as is
                      every MAP candidate)
    reread_min, reread_max : bounds on the repeats of a suspect's row vector
    reread_fraction : the re-reads add at most this fraction of the budget in read vectors (the
                      strongest suspects first)
    design_seed     : seed of the production design (the same test patterns for every die)
    """

    active_fraction: float = 0.25
    repeat_fraction: float = 0.125
    stuck_prior: float | None = None
    cells: bool | str = "auto"
    min_cell_r2: float = 0.5
    edges: bool = False
    edge_reads: int = 256
    edge_prior_sigma_lsb: float | None = None
    max_vectors_per_call: int = 4096
    attempts: int = DEFAULT_ATTEMPTS
    min_gain: float = 0.2
    min_gain_t: float = 8.0
    min_valid_fraction: float = 0.25
    max_noise_ratio: float = 5.0
    stuck_min_z: float = 4.5
    stuck_mag_range: tuple[float, float] = (0.3, 3.0)
    broadcast: bool = True
    reread_stuck: bool = True
    suspect_min_z: float = 3.5
    reread_min: int = 8
    reread_max: int = 128
    reread_fraction: float = 0.25
    design_seed: int = 2022


UNUSABLE_REASONS: dict[str, str] = {
    "non_finite": "an estimate of the bit line is not a finite number",
    "negative_gain": "the bit line's code falls as its inner product rises (gain <= -min_gain)",
    "no_response": "the bit line's code does not follow its inner product (|gain| < min_gain, or "
    "fewer than min_gain_t standard errors from 0)",
    "saturated": "most reads of the bit line sit on an ADC rail (fewer than min_valid_fraction valid)",
    "ill_conditioned": "the valid reads of the bit line do not sweep its inner product (singular fit)",
    "erratic": "the bit line's codes scatter far more than the die's other bit lines",
}
"""Why characterization marks a live bit line unusable. An unusable bit line is recorded as dead in
the signature (compensation routes around it; too many make the die not calibratable, bin 11) and
listed under its reason in ``signature.meta["unusable_cols"]`` (flat ``macro * phys_cols + col``)."""

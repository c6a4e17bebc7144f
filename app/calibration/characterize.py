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

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import cho_factor, cho_solve
from scipy.special import ndtr

from app.calibration.signature import Signature, StuckCells
from app.calibration.transient import DEFAULT_ATTEMPTS, RetryingCalls
from hardware.chip import ChipGeometry
from hardware.driver import Driver

DEFAULT_BUDGET = 131_072
"""Default read vectors per die (2,048 per macro and pattern on the default 32-macro geometry)."""

MIN_VECTORS_PER_PATTERN = 16


@dataclass(frozen=True)
class CharacterizationConfig:
    """Design and estimator knobs (defaults are the production setting).

    active_fraction : fraction of rows driven by each input vector
    repeat_fraction : fraction of the vectors read twice (read-noise estimate)
    stuck_prior     : prior probability that a cell is stuck (MAP test); ``None`` (default): estimated
                      from the die's own reads (empirical Bayes, :func:`_stuck_fraction`)
    cells           : "auto" keeps per-cell errors when they explain at least ``min_cell_r2`` of the
                      cell-error variance; True always, False never
    edges           : estimate the ADC decision edges (from ``edge_reads`` vectors per pattern); off by
                      default: measured to change no decision (docs/calibration.md) and 137 kB per die
    edge_prior_sigma_lsb : spread of the N(0, s^2) prior on the edge offsets; ``None`` (default): the
                      spread of the die's own pooled edge estimates (:func:`_edge_prior_sigma`)
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


@dataclass(frozen=True)
class CharacterizationResult:
    """A signature and what it cost on the tester.

    reads        : read_macro calls; read_vectors: word-line vectors driven (the budget unit)
    writes       : macro writes; tester_s: tester seconds charged by the driver
    compute_s    : host seconds spent estimating (not tester time)
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

    def summary(self) -> dict[str, float | int]:
        """Signature headline numbers plus the cost of measuring them."""
        out: dict[str, float | int] = dict(self.signature.summary())
        out.update(
            {
                "reads": self.reads,
                "read_vectors": self.read_vectors,
                "writes": self.writes,
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


# ----------------------------------------------------------------------------------------- design
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


# ------------------------------------------------------------------------------------ measurement
def measure(
    driver: Driver, design: Design, config: CharacterizationConfig, calls: RetryingCalls | None = None
) -> tuple[NDArray[np.int16], NDArray[np.int16]]:
    """Write and read every macro with both patterns: codes ``(n, n_macros, phys_cols)`` for W and -W.

    Each macro is written, then read in calls of at most ``config.max_vectors_per_call`` vectors, each
    call through ``calls`` (retried after a transient error; default: the die under the probe with
    ``config.attempts`` tries per call).
    """
    g = driver.geometry()
    if calls is None:
        calls = RetryingCalls(driver, driver.identify().address, attempts=config.attempts)
    chunk = config.max_vectors_per_call
    n = design.inputs.shape[0]
    out = []
    for pattern in (design.weights, (-design.weights).astype(np.int8)):
        per_macro = []
        for m in range(g.n_macros):
            write = partial(driver.write_macro, m, pattern)
            calls.call(write)
            parts = [
                calls.call(partial(driver.read_macro, m, design.inputs[i : i + chunk]), restore=write)
                for i in range(0, n, chunk)
            ]
            per_macro.append(np.concatenate(parts))
        out.append(np.stack(per_macro, axis=1))
    return out[0], out[1]


# -------------------------------------------------------------------------------------- estimation
@lru_cache(maxsize=1)
def _noise_var_table() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """E_u[Var(round(u + n))] for n ~ N(0, s^2), u ~ U(0, 1): the code variance of one repeated read."""
    s = np.concatenate([np.linspace(0.0, 1.0, 101)[1:], np.linspace(1.01, 12.0, 200)])
    u = (np.arange(64) + 0.5) / 64.0
    k = np.arange(-60, 61)
    f = np.zeros_like(s)
    for i, si in enumerate(s):
        # P(code >= k) for every u, then the variance of the code.
        pk = ndtr((u[:, None] - (k[None, :] - 0.5)) / si)
        pm = pk[:, :-1] - pk[:, 1:]  # P(code == k)
        vals = k[:-1].astype(np.float64)
        mean = (pm * vals).sum(axis=1)
        f[i] = float(((pm * vals**2).sum(axis=1) - mean**2).mean())
    return np.concatenate([[0.0], s]), np.concatenate([[0.0], f])


def noise_sigma_from_repeat_var(var_code: NDArray[np.float64]) -> NDArray[np.float64]:
    """Invert the code variance of repeated reads into the analog read-noise sigma (MAC = LSB units)."""
    table_s, table_f = _noise_var_table()
    v = np.asarray(var_code, dtype=np.float64)
    big = v > table_f[-1]
    out = np.interp(v, table_f, table_s)
    return np.where(big, np.sqrt(np.maximum(v - 1.0 / 12.0, 0.0)), out)


@dataclass
class _LinearFit:
    """The linear part of the readout model, for all columns of the die stacked: (m*p,) or (r, m*p)."""

    gain: NDArray[np.float64]
    offset: NDArray[np.float64]
    d_hat: NDArray[np.float32]  # stuck-cell statistic (value * magnitude), MAC
    stuck: NDArray[np.bool_]
    cell_err: NDArray[np.float32]  # posterior-mean relative cell errors
    cell_sigma: float
    resid_sigma: float
    var_z: float
    var_s: NDArray[np.float64]  # (m*p,) variance of the ideal sums over the valid reads
    col_var_z: NDArray[np.float64]  # (m*p,) residual variance of z per column
    col_var_h: NDArray[np.float64]  # (m*p,) residual variance of h per column (gain's precision)
    stuck_candidates: int = 0  # cells that pass the MAP test, before confirmation
    stuck_z: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))  # confirmed cells' |d|/sd
    stuck_prior: float = 0.0  # the prior probability of a stuck cell the MAP test used

    def analog(
        self, a: NDArray[np.float32], w_all: NDArray[np.float32], sign: float, cells: bool
    ) -> NDArray[np.float32]:
        """Predicted analog values (n, m*p) for inputs ``a`` with ``sign * W`` written."""
        rel = (1.0 + self.cell_err) if cells else np.float32(1.0)
        eff = (sign * w_all * self.gain[None, :].astype(np.float32) * rel).astype(np.float32)
        eff = np.where(self.stuck, self.d_hat, eff)
        return np.asarray(a @ eff + self.offset[None, :].astype(np.float32), dtype=np.float32)


def _sparse_apply(
    a: NDArray[np.float32],
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    vals: NDArray[np.floating[Any]],
    n_cols: int,
) -> NDArray[np.float32]:
    """``a @ D`` (n, n_cols) for a sparse D with entries ``vals`` at (rows, cols)."""
    out = np.zeros((a.shape[0], n_cols), np.float32)
    for r, c, v in zip(rows, cols, vals, strict=True):
        out[:, c] += a[:, r] * np.float32(v)
    return out


def _spd_inverse(m: NDArray[np.float64]) -> NDArray[np.float64]:
    """Inverse of a symmetric positive-definite matrix through its Cholesky factor."""
    c, low = cho_factor(m, lower=True, check_finite=False)
    return np.asarray(cho_solve((c, low), np.eye(m.shape[0]), check_finite=False), dtype=np.float64)


class _Mask:
    """Column statistics over the valid (uncensored) reads; only censored columns pay for the mask."""

    def __init__(self, valid: NDArray[np.bool_]) -> None:
        self.cols = np.flatnonzero(~valid.all(axis=0))  # columns with at least one censored read
        self.m = valid[:, self.cols].astype(np.float32)
        self.cnt = np.full(valid.shape[1], float(valid.shape[0]))
        self.cnt[self.cols] = np.maximum(self.m.sum(axis=0, dtype=np.float64), 1.0)
        self.any_censored = self.cols.size > 0

    def apply_(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Zero the censored reads of ``x`` in place (``x`` must be a fresh array)."""
        if self.any_censored:
            x[:, self.cols] *= self.m
        return x

    def mean(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        tot = x.sum(axis=0, dtype=np.float64)
        if self.any_censored:
            tot[self.cols] = (x[:, self.cols] * self.m).sum(axis=0, dtype=np.float64)
        return np.asarray(tot / self.cnt, dtype=np.float64)

    def centred(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        return self.apply_(x - self.mean(x).astype(np.float32))

    @staticmethod
    def sumsq(x: NDArray[np.float32]) -> NDArray[np.float64]:
        """Column sums of squares of an already masked ``x``."""
        return np.asarray(np.einsum("ij,ij->j", x, x, dtype=np.float64), dtype=np.float64)


def _fit_linear(
    a: NDArray[np.float32],
    s_ideal: NDArray[np.float32],
    w_all: NDArray[np.float32],
    yp: NDArray[np.float32],
    yn: NDArray[np.float32],
    valid: NDArray[np.bool_],
    live: NDArray[np.bool_],
    stuck_prior: float | None,
    stuck_min_z: float = 4.5,
    stuck_mag_range: tuple[float, float] = (0.3, 3.0),
) -> _LinearFit:
    """Gain, offset, stuck cells and per-cell errors from the codes of both patterns (see module doc).

    a (n, r) inputs; s_ideal (n, m*p) ideal sums under W; w_all (r, m*p) the pattern W per column;
    yp, yn (n, m*p) codes (MAC) read under W and -W; valid (n, m*p) False where either code sat on
    an ADC rail (censored: left out of every statistic).
    """
    n, r_ = a.shape
    n_cols = yp.shape[1]
    mk = _Mask(valid)
    cnt = mk.cnt
    h = (yp - yn) * np.float32(0.5)
    z = (yp + yn) * np.float32(0.5)
    a64 = a.astype(np.float64)
    ac = a64 - a64.mean(axis=0)
    gram = ac.T @ ac
    acf = ac.astype(np.float32)
    k_eff = float(np.trace(gram)) / n  # variance-weighted active rows per read (centred design)
    # Per (row, column) energy of the design over the valid reads: the matched filter's normaliser.
    energy = np.repeat(np.clip(np.diag(gram), 1e-9, None)[:, None], n_cols, axis=1)
    if mk.any_censored:
        energy[:, mk.cols] = np.clip((acf**2).T @ mk.m, 1e-9, None)

    s_c = mk.centred(s_ideal)
    var_s = mk.sumsq(s_c) / cnt

    fit_ok = live & (var_s > 1e-6)  # a column whose valid reads do not sweep the sums has no gain

    def regress_gain(hh: NDArray[np.float32]) -> NDArray[np.float64]:
        cov = (s_c * hh).sum(axis=0, dtype=np.float64) / cnt  # s_c is centred and masked
        g = np.where(fit_ok, cov / np.maximum(var_s, 1e-6), 0.0)
        return np.asarray(np.where(np.isfinite(g), g, 0.0), dtype=np.float64)

    gain = regress_gain(h)

    # Stuck cells: a matched filter on z (stuck cells are sparse, so the filter beats a joint fit).
    z_c = mk.centred(z)
    d_hat = ((acf.T @ z_c) / energy).astype(np.float32)  # (r, m*p)
    noise_map = 1.0 / np.sqrt(energy)
    mag = np.maximum(np.abs(gain), 0.05)[None, :]
    sd_z = np.sqrt(np.maximum(mk.sumsq(z_c) / cnt, 1e-12))
    stuck = np.zeros(d_hat.shape, dtype=bool)
    candidates = stuck
    z_stuck: NDArray[np.float32] | None = None
    lo, hi = stuck_mag_range
    used_prior = stuck_prior or 0.0
    for _ in range(2):  # the second pass measures the noise with the stuck cells removed
        s_d = noise_map * sd_z[None, :]
        log_lr = (np.abs(d_hat) * mag - 0.5 * mag**2) / np.maximum(s_d**2, 1e-12)
        used_prior = _stuck_fraction(log_lr[:, fit_ok]) if stuck_prior is None else stuck_prior
        prior = math.log((1.0 - used_prior) / used_prior)
        candidates = (log_lr > prior) & fit_ok[None, :]
        # Confirmed: far from 0 in standard errors, and about one cell's contribution in size. A
        # statistic driven by censoring or a bad column fit fails one or the other (no inflated maps).
        ratio = np.abs(d_hat) / mag
        stuck = candidates & (np.abs(d_hat) >= stuck_min_z * s_d) & (ratio >= lo) & (ratio <= hi)
        if not stuck.any():
            break
        rows, cols = np.nonzero(stuck)
        z_stuck = _sparse_apply(a, rows, cols, d_hat[rows, cols], n_cols)
        sd_z = np.sqrt(np.maximum(mk.sumsq(mk.centred(z - z_stuck)) / cnt, 1e-12))
    rows, cols = np.nonzero(stuck)
    stuck_z = np.abs(d_hat[rows, cols]) / np.maximum((noise_map * sd_z[None, :])[rows, cols], 1e-12)
    z_clean = z if z_stuck is None else z - z_stuck
    offset = np.where(live, mk.mean(z_clean), 0.0)

    # h: stuck cells read the same under W and -W, so their healthy share is missing; put it back
    # (it would bias the gain by one cell in ``rows``) and regress the gain again.
    h_fix = h
    if rows.size:
        h_fix = h + _sparse_apply(a, rows, cols, np.asarray(w_all[rows, cols] * gain[cols]), n_cols)
        gain = regress_gain(h_fix)
    h_corr = mk.centred(h_fix - (gain[None, :] * s_ideal).astype(np.float32))
    z_res = mk.apply_(z_clean - offset[None, :].astype(np.float32))
    n_live = float(cnt[live].sum()) if live.any() else 1.0
    var_z = float(mk.sumsq(z_res)[live].sum()) / n_live if live.any() else 1.0
    var_h = float(mk.sumsq(h_corr)[live].sum()) / n_live if live.any() else 1.0
    g2 = float((gain[live] ** 2).mean()) if live.any() else 1.0
    cell_sigma = math.sqrt(max(var_h - var_z, 0.0) / max(k_eff * g2, 1e-12))

    # Per-cell errors: ridge regression = posterior mean under the N(0, cell_sigma^2) prior. Censored
    # reads enter as zero residuals (a slight extra shrinkage on the few columns that have them).
    tau2 = max(cell_sigma**2 * g2, 1e-10)
    lam = max(var_z, 1e-6) / tau2
    if math.isfinite(lam) and math.isfinite(g2) and g2 > 0:
        h_inv_c = _spd_inverse(gram + lam * np.eye(r_))
        delta = h_inv_c.astype(np.float32) @ (acf.T @ h_corr)  # g * w * e
        # Never divide by an estimated gain that is not safely positive (those columns are unusable).
        safe = fit_ok & (gain > 1e-3)
        cell_err = delta * w_all / np.where(safe, gain, 1.0)[None, :].astype(np.float32)
        cell_err[:, ~safe] = 0.0
        post_var = var_z * float(np.diag(h_inv_c).mean()) / g2
        resid_sigma = math.sqrt(min(post_var, cell_sigma**2))
    else:  # no live column to learn the cell spread from: nothing resolved
        cell_err = np.zeros((r_, n_cols), np.float32)
        resid_sigma = cell_sigma
    cell_err[stuck] = 0.0
    cell_err[:, ~live] = 0.0
    cell_err = np.where(np.isfinite(cell_err), cell_err, 0.0).astype(np.float32)
    col_var_z = mk.sumsq(z_res) / cnt
    col_var_h = mk.sumsq(h_corr) / cnt
    return _LinearFit(
        gain,
        offset,
        d_hat,
        stuck,
        cell_err,
        cell_sigma,
        resid_sigma,
        var_z,
        var_s=var_s,
        col_var_z=np.asarray(col_var_z, dtype=np.float64),
        col_var_h=np.asarray(col_var_h, dtype=np.float64),
        stuck_candidates=int(candidates.sum()),
        stuck_z=np.asarray(stuck_z, dtype=np.float64),
        stuck_prior=float(used_prior),
    )


def _stuck_fraction(log_lr: NDArray[np.float32], iterations: int = 100) -> float:
    """The fraction of stuck cells, estimated from the die's own matched-filter statistics.

    Empirical Bayes: every cell is stuck with an unknown probability ``pi``; ``log_lr`` (cells,
    columns) is each cell's log likelihood ratio, stuck against healthy. EM on the two-component
    mixture finds the ``pi`` that makes the reads most likely; a Beta(1, 1) prior on ``pi`` keeps it
    off 0 and 1 when no cell (or every cell) looks stuck. Nothing here comes from the simulator:
    domain.md (section 2) names stuck-at cells as a defect but gives no rate.
    """
    x = np.asarray(log_lr, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        return 0.5
    pi = 1.0 / math.sqrt(n)  # a start between "none" and "many"; EM moves it from there
    for _ in range(iterations):
        logit = math.log(pi / (1.0 - pi))
        resp = 0.5 * (1.0 + np.tanh(0.5 * (x + logit)))  # posterior P(stuck), overflow-free
        new = (float(resp.sum()) + 1.0) / (n + 2.0)
        if abs(new - pi) <= 1e-3 * pi:
            return new
        pi = new
    return pi


def estimate_signature(
    geometry: ChipGeometry,
    design: Design,
    y_pos: NDArray[np.int16],
    y_neg: NDArray[np.int16],
    config: CharacterizationConfig,
    meta: dict[str, Any] | None = None,
) -> tuple[Signature, dict[str, float]]:
    """The signature from the codes of both patterns, ``(n, n_macros, phys_cols)`` int16 each."""
    g = geometry
    m_, p_, r_ = g.n_macros, g.phys_cols, g.rows
    lsb = g.adc_lsb_mac
    n = design.n
    # Codes outside the ADC range (a misbehaving driver) read as the nearest rail: censored below.
    cp = np.clip(y_pos.reshape(n, m_ * p_), g.code_min, g.code_max).astype(np.int16)
    cn = np.clip(y_neg.reshape(n, m_ * p_), g.code_min, g.code_max).astype(np.int16)
    yp = cp.astype(np.float32) * np.float32(lsb)
    yn = cn.astype(np.float32) * np.float32(lsb)
    a = design.inputs.astype(np.float32)
    w_all = np.tile(design.weights.astype(np.float32), (1, m_))  # (r, m*p)
    s_ideal = np.tile(a @ design.weights.astype(np.float32), (1, m_))  # (n, m*p)

    # Dead bit lines: a code that never moves although the ideal sums sweep the ADC range.
    dead = (np.ptp(cp, axis=0) == 0) & (np.ptp(cn, axis=0) == 0) & (cp[0] == cn[0])
    dead_code = np.where(dead, cp[0], 0).astype(np.int16)
    live = ~dead

    # Codes on the ADC rails are censored: they are left out of every statistic of their column.
    rail_p = (cp == g.code_min) | (cp == g.code_max)
    rail_n = (cn == g.code_min) | (cn == g.code_max)
    valid = ~(rail_p | rail_n)
    # Degenerate bit lines (no response, inverted, saturated, singular, erratic) are found after a fit
    # and the die is fitted again without them, so they bias neither the die's statistics nor anything
    # else; they end up in the signature as dead bit lines, with their reason in the meta data.
    unusable: dict[str, NDArray[np.bool_]] = {}
    fit_live = live.copy()

    def fit_columns(cols: NDArray[np.bool_]) -> _LinearFit:
        return _fit_linear(
            a,
            s_ideal,
            w_all,
            yp,
            yn,
            valid,
            cols,
            config.stuck_prior,
            config.stuck_min_z,
            config.stuck_mag_range,
        )

    for _ in range(3):
        fit = fit_columns(fit_live)
        found = _unusable_columns(fit, valid, fit_live, config)
        if not any(v.any() for v in found.values()):
            break
        for reason, cols in found.items():
            unusable[reason] = unusable.get(reason, np.zeros_like(cols)) | cols
        fit_live = fit_live & ~np.logical_or.reduce(list(found.values()))
    else:
        fit = fit_columns(fit_live)
    bad = live & ~fit_live
    if bad.any():
        # An unusable bit line is recorded as dead, returning its most frequent code.
        for c in np.flatnonzero(bad):
            vals, counts = np.unique(cp[:, c], return_counts=True)
            dead_code[c] = vals[np.argmax(counts)]
        dead = dead | bad
        live = fit_live
    r2 = 1.0 - fit.resid_sigma**2 / fit.cell_sigma**2 if fit.cell_sigma > 0 else 0.0
    keep_cells = config.cells is True or (config.cells == "auto" and r2 >= config.min_cell_r2)

    gain = fit.gain.copy()
    cell_err = fit.cell_err
    if keep_cells:
        # The mean cell error of a column is part of its gain.
        mean_e = np.where(live, cell_err.mean(axis=0), 0.0)
        gain = gain * (1.0 + mean_e)
        cell_err = np.where(fit.stuck | ~live[None, :], 0.0, (1.0 + cell_err) / (1.0 + mean_e)[None, :] - 1.0)

    # Read noise from the repeated vectors (per macro, both patterns, live columns).
    nr = design.n_repeat
    if nr >= 2:
        d = np.concatenate([cp[-nr:] - cp[:nr], cn[-nr:] - cn[:nr]]).astype(np.float64)
        var_col = (d**2).mean(axis=0) / 2.0
        var_m = np.array(
            [_mean_where(var_col[k * p_ : (k + 1) * p_], live[k * p_ : (k + 1) * p_]) for k in range(m_)]
        )
        sigma_m = noise_sigma_from_repeat_var(var_m) * lsb
    else:
        sigma_m = np.full(m_, math.sqrt(max(2 * fit.var_z - lsb * lsb / 12.0, 1e-4)))

    edges: NDArray[np.float64] | None = None
    if config.edges:
        # A subsample of the reads is plenty for the edges (each edge sees many reads per column).
        sub_rows = np.arange(0, design.n_distinct, max(1, design.n_distinct // config.edge_reads))
        a_sub = a[sub_rows]
        edges, edge_prior = _estimate_edges(
            g,
            np.concatenate(
                [fit.analog(a_sub, w_all, 1.0, keep_cells), fit.analog(a_sub, w_all, -1.0, keep_cells)]
            ),
            np.concatenate([cp[sub_rows], cn[sub_rows]]),
            np.repeat(sigma_m, p_),
            live,
            config.edge_prior_sigma_lsb,
        )

    meta = dict(meta or {})
    meta["stuck"] = {
        "candidates": int(fit.stuck_candidates),
        "confirmed": int(fit.stuck.sum()),
        "prior": fit.stuck_prior,
        "prior_source": "measured" if config.stuck_prior is None else "configured",
    }
    if edges is not None:
        meta["edge_prior_sigma_lsb"] = edge_prior
    if bad.any():
        meta["unusable_cols"] = {
            reason: np.flatnonzero(cols).tolist() for reason, cols in sorted(unusable.items()) if cols.any()
        }
    rows, cols_flat = np.nonzero(fit.stuck)
    macro_idx, col_idx = np.divmod(cols_flat, p_)
    stuck_cells = StuckCells(
        macro_idx.astype(np.int64),
        rows.astype(np.int64),
        col_idx.astype(np.int64),
        np.where(fit.d_hat[rows, cols_flat] >= 0, 1, -1).astype(np.int8),
        np.abs(gain[cols_flat]),
    )
    signature = Signature(
        geometry=g,
        gain=np.where(live, gain, 0.0).reshape(m_, p_),
        offset_mac=np.where(live, fit.offset, 0.0).reshape(m_, p_),
        noise_sigma_mac=sigma_m.astype(np.float32),
        cell_sigma=fit.cell_sigma,
        cell_residual_sigma=fit.resid_sigma if keep_cells else fit.cell_sigma,
        dead_cols=dead.reshape(m_, p_),
        dead_code=dead_code.reshape(m_, p_),
        stuck=stuck_cells,
        edge_offset_lsb=None if edges is None else edges.reshape(m_, p_, g.adc_levels - 1).astype(np.float32),
        cell_error=cell_err.reshape(r_, m_, p_).transpose(1, 0, 2) if keep_cells else None,
        meta=meta,
    )
    diag = {
        "cell_r2": float(r2),
        "rail_fraction": float((~valid[:, live]).mean()) if live.any() else 0.0,
        "var_z": float(fit.var_z),
        "n_unusable_cols": int(bad.sum()),
        "stuck_candidates": int(fit.stuck_candidates),
        "stuck_confirmed": len(stuck_cells),
        "stuck_score_min": float(fit.stuck_z.min()) if fit.stuck_z.size else 0.0,
    }
    return signature, diag


def _unusable_columns(
    fit: _LinearFit, valid: NDArray[np.bool_], live: NDArray[np.bool_], config: CharacterizationConfig
) -> dict[str, NDArray[np.bool_]]:
    """Live columns (m*p,) whose estimates are degenerate, by reason (:data:`UNUSABLE_REASONS`)."""
    n = valid.shape[0]
    n_valid = valid.sum(axis=0)
    finite = (
        np.isfinite(fit.gain)
        & np.isfinite(fit.offset)
        & np.isfinite(fit.d_hat).all(axis=0)
        & np.isfinite(fit.col_var_z)
    )
    out: dict[str, NDArray[np.bool_]] = {"non_finite": live & ~finite}
    rest = live & finite
    out["saturated"] = rest & (n_valid < max(8.0, config.min_valid_fraction * n))
    rest &= ~out["saturated"]
    ref_var_s = float(np.median(fit.var_s[rest])) if rest.any() else 0.0
    out["ill_conditioned"] = rest & (fit.var_s < 0.05 * ref_var_s)
    rest &= ~out["ill_conditioned"]
    # The gain must be both large enough and resolved (t statistic), or random codes would pass.
    se = np.sqrt(fit.col_var_h / np.maximum(n_valid * fit.var_s, 1e-12))
    t = np.abs(fit.gain) / np.maximum(se, 1e-12)
    resolved = (np.abs(fit.gain) >= config.min_gain) & (t >= config.min_gain_t)
    out["negative_gain"] = rest & resolved & (fit.gain < 0)
    out["no_response"] = rest & ~resolved
    rest &= ~(out["negative_gain"] | out["no_response"])
    if rest.any():
        ref = float(np.median(fit.col_var_z[rest]))
        out["erratic"] = rest & (fit.col_var_z > config.max_noise_ratio**2 * max(ref, 1e-6))
    return out


def _mean_where(x: NDArray[np.float64], mask: NDArray[np.bool_]) -> float:
    return float(x[mask].mean()) if mask.any() else 0.0


def _estimate_edges(
    g: ChipGeometry,
    v: NDArray[np.float64],
    codes: NDArray[np.int16],
    sigma: NDArray[np.float64],
    live: NDArray[np.bool_],
    prior_sigma_lsb: float | None = None,
) -> tuple[NDArray[np.float64], float]:
    """ADC edge offsets (n_cols, levels - 1) in LSB: one Fisher-scoring step of a probit fit per edge.

    Model: ``P(code >= k | v) = Phi((v - (k - 0.5 + e_k)) / sigma)``. ``v`` (n, n_cols) predicted analog
    values (MAC), ``codes`` (n, n_cols) the codes read, ``sigma`` (n_cols,) the read noise. The
    N(0, prior_sigma_lsb^2) prior shrinks edges with little data towards the nominal position; without
    a ``prior_sigma_lsb`` its spread is measured on the die (:func:`_edge_prior_sigma`). Returns the
    edges and the prior spread used.
    """
    lsb = g.adc_lsb_mac
    n_cols = v.shape[1]
    vv = v.astype(np.float64) / lsb
    c = codes.astype(np.int64)
    s = np.maximum(sigma / lsb, 0.05)[None, :]
    n_edges = g.adc_levels - 1
    score = np.zeros(n_cols * n_edges)
    info = np.zeros(n_cols * n_edges)
    half = int(min(5, math.ceil(2.0 * float(s.max())) + 1))
    base = np.rint(vv).astype(np.int64)
    col = np.arange(n_cols)[None, :] * n_edges
    for j in range(-half, half + 1):
        k = base + j
        ok = (k > g.code_min) & (k <= g.code_max) & live[None, :]
        zz = (vv - (k - 0.5)) / s
        p = np.clip(ndtr(zz), 1e-9, 1 - 1e-9)
        phi = np.exp(-0.5 * zz * zz) / math.sqrt(2 * math.pi)
        wgt = phi / (p * (1.0 - p))
        idx = (col + np.clip(k - g.code_min - 1, 0, n_edges - 1))[ok]
        score += np.bincount(idx, weights=(wgt * ((c >= k) - p) / s)[ok], minlength=score.size)
        info += np.bincount(idx, weights=(wgt * phi / s**2)[ok], minlength=info.size)
    tau = _edge_prior_sigma(score, info) if prior_sigma_lsb is None else prior_sigma_lsb
    est = score / (info + 1.0 / tau**2)
    # d log L / d e = -score, so the step is -score / info; the sign is folded here.
    return np.asarray(np.clip(-est, -0.5, 0.5).reshape(n_cols, n_edges), dtype=np.float64), tau


EDGE_PRIOR_MAX_LSB = 0.5
"""The widest edge-offset spread the prior may take: an edge further than half an LSB from its
nominal position is the neighbouring code's edge (the estimate is clipped there too)."""


def _edge_prior_sigma(score: NDArray[np.float64], info: NDArray[np.float64], min_info: float = 4.0) -> float:
    """The spread of the die's edge offsets, from its own pooled unshrunk edge estimates.

    Each edge with Fisher information ``info >= min_info`` (standard error <= 0.5 LSB) gives an
    unshrunk estimate ``e = -score / info`` with sampling variance ``1 / info``; the method of moments
    takes ``tau^2 = mean(e^2 - 1 / info)`` (the spread left after the sampling noise). Kept within
    [0.02, :data:`EDGE_PRIOR_MAX_LSB`] LSB; with no edge to pool, the widest spread (no shrinkage to
    speak of). domain.md (section 2) names edge shifts (DNL) but gives no figure to take instead.
    """
    ok = info >= min_info
    if not ok.any():
        return EDGE_PRIOR_MAX_LSB
    raw = score[ok] / info[ok]
    tau2 = float(np.mean(raw**2 - 1.0 / info[ok]))
    return float(np.clip(math.sqrt(max(tau2, 0.0)), 0.02, EDGE_PRIOR_MAX_LSB))


# ------------------------------------------------------------------------------------ entry point
def characterize(
    driver: Driver,
    *,
    budget: int = DEFAULT_BUDGET,
    rng: np.random.Generator | int | None = None,
    config: CharacterizationConfig | None = None,
) -> CharacterizationResult:
    """Measure the signature of the die under the probe with ``budget`` read vectors.

    Writes every macro of the geometry twice and reads it with ``budget / (2 n_macros)`` vectors per
    pattern. A :class:`~hardware.driver.HardwareTimeoutError` or :class:`~hardware.driver.ContactError`
    retries the failed call (``config.attempts`` tries); when the last try fails it propagates, as does
    any other driver error; no partial signature is ever returned.
    """
    config = config or CharacterizationConfig()
    gen = np.random.default_rng(rng)
    g = driver.geometry()
    n = vectors_per_pattern(g, budget)
    design = make_design(g, n, gen, config)
    c0 = driver.counters.as_dict()
    ident = driver.identify()
    calls = RetryingCalls(driver, ident.address, attempts=config.attempts)
    y_pos, y_neg = measure(driver, design, config, calls)
    c1 = driver.counters.as_dict()
    t0 = time.perf_counter()
    meta: dict[str, Any] = {"ecid": ident.ecid, "budget": int(budget), "vectors_per_pattern": int(n)}
    signature, diag = estimate_signature(g, design, y_pos, y_neg, config, meta)
    return CharacterizationResult(
        signature=signature,
        reads=int(c1["read_calls"] - c0["read_calls"]),
        read_vectors=int(c1["read_vectors"] - c0["read_vectors"]),
        writes=int(c1["macro_writes"] - c0["macro_writes"]),
        tester_s=float(c1["tester_time_s"] - c0["tester_time_s"]),
        compute_s=time.perf_counter() - t0,
        budget=int(budget),
        diagnostics=diag,
        retries=calls.retries,
    )

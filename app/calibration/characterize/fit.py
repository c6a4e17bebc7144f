"""The linear part of the readout model: gain, offset, stuck cells and per-cell errors of every column."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import cho_factor, cho_solve


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
    stuck_prior: float,
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
    prior = math.log((1.0 - stuck_prior) / stuck_prior)
    sd_z = np.sqrt(np.maximum(mk.sumsq(z_c) / cnt, 1e-12))
    stuck = np.zeros(d_hat.shape, dtype=bool)
    candidates = stuck
    z_stuck: NDArray[np.float32] | None = None
    lo, hi = stuck_mag_range
    for _ in range(2):  # the second pass measures the noise with the stuck cells removed
        s_d = noise_map * sd_z[None, :]
        log_lr = (np.abs(d_hat) * mag - 0.5 * mag**2) / np.maximum(s_d**2, 1e-12)
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
    )

"""The linear part of the readout model: gain, offset and per-cell errors of every column at once.

Everything is vectorized over the die's columns (``n_macros * phys_cols``, stacked); nothing loops
over columns. The die-independent algebra comes precomputed with the design
(:class:`~app.calibration.characterize.design.DesignMatrices`). A fit has two stages:

* :func:`column_statistics`: one pass over the codes (the only full-size work, plus one matrix product
  for the stuck-cell statistic), giving per-column sums and the stuck-cell statistic ``d_hat``;
* :func:`finalize`: gain, offset and residual spreads for a given stuck-cell set. Stuck cells touch
  only their own columns, so only those columns are recomputed; the stuck set can therefore change
  (targeted re-reads, :mod:`app.calibration.characterize.stuck`) without a new pass over the codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from app.calibration.characterize.design import DesignMatrices


class _Mask:
    """Column statistics over the valid (uncensored) reads; only censored columns pay for the mask."""

    def __init__(self, valid: NDArray[np.bool_]) -> None:
        self.cols = np.flatnonzero(~valid.all(axis=0))  # columns with at least one censored read
        self.m = valid[:, self.cols].astype(np.float32)
        self.cnt = np.full(valid.shape[1], float(valid.shape[0]))
        self.cnt[self.cols] = np.maximum(self.m.sum(axis=0, dtype=np.float64), 1.0)
        self.any_censored = self.cols.size > 0

    def sub(self, cols: NDArray[np.int64]) -> tuple[NDArray[np.float32] | None, NDArray[np.float64]]:
        """The mask (n, len(cols)) float32 of the columns ``cols`` (None: none censored) and their counts."""
        if not self.any_censored:
            return None, self.cnt[cols]
        idx = np.full(self.cnt.size, -1, np.int64)
        idx[self.cols] = np.arange(self.cols.size)
        sel = idx[cols]
        out = np.ones((self.m.shape[0], cols.size), np.float32)
        has = sel >= 0
        out[:, has] = self.m[:, sel[has]]
        return out, self.cnt[cols]


def _mean(
    x: NDArray[np.float32], m: NDArray[np.float32] | None, cnt: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Column means (k,) of ``x`` (n, k) over the valid reads (``m`` None: all valid)."""
    tot = x.sum(axis=0, dtype=np.float64) if m is None else (x * m).sum(axis=0, dtype=np.float64)
    return np.asarray(tot / cnt, dtype=np.float64)


def _centred(
    x: NDArray[np.float32], m: NDArray[np.float32] | None, cnt: NDArray[np.float64]
) -> NDArray[np.float32]:
    """``x`` (n, k) minus its column means over the valid reads, censored reads zeroed (``m`` None: all valid)."""
    out = x - _mean(x, m, cnt).astype(np.float32)
    return out if m is None else out * m


def _sumsq(x: NDArray[np.float32]) -> NDArray[np.float64]:
    return np.asarray(np.einsum("ij,ij->j", x, x, dtype=np.float64), dtype=np.float64)


@dataclass
class ColumnStats:
    """One pass over a die's codes: per-column sums and the stuck-cell statistic (all columns stacked).

    h, z_c      : (n, n_cols) float32 half difference / centred half sum of the codes (MAC) of W and -W
    cnt         : (n_cols,) valid reads; s_c (n, n_cols) centred masked ideal sums; var_s their variance
    s_hz        : (n_cols,) sum of s_c * h; hh (n_cols,) sum of squares of h centred
    z_mean, zz  : (n_cols,) mean of z and sum of squares of z centred (valid reads)
    d_hat       : (rows, n_cols) float32 stuck-cell statistic (value * magnitude, MAC)
    noise_row   : (rows,) 1 / sqrt(energy) of uncensored columns; ``noise_cens`` (rows, n_censored)
    """

    dm: DesignMatrices
    mask: _Mask
    h: NDArray[np.float32]
    z_c: NDArray[np.float32]
    s_c: NDArray[np.float32]
    var_s: NDArray[np.float64]
    s_hz: NDArray[np.float64]
    hh: NDArray[np.float64]
    z_mean: NDArray[np.float64]
    zz: NDArray[np.float64]
    d_hat: NDArray[np.float32]
    noise_row: NDArray[np.float64]
    noise_cens: NDArray[np.float64]
    cens_index: NDArray[np.int64]  # (n_cols,) column -> index into noise_cens, -1 if uncensored

    @property
    def cnt(self) -> NDArray[np.float64]:
        return self.mask.cnt

    def z(self, cols: NDArray[np.int64]) -> NDArray[np.float32]:
        """The half sums of the columns ``cols`` (n, len(cols)) (censored reads hold the mean)."""
        return self.z_c[:, cols] + self.z_mean[cols].astype(np.float32)

    def noise_at(self, rows: NDArray[np.int64], cols: NDArray[np.int64]) -> NDArray[np.float64]:
        """1 / sqrt(energy) at the cells (rows, cols): the standard error of ``d_hat`` per unit noise."""
        out = self.noise_row[rows]
        ci = self.cens_index[cols]
        c = ci >= 0
        if c.any():
            out = out.copy()
            out[c] = self.noise_cens[rows[c], ci[c]]
        return out

    def gain0(self, fit_ok: NDArray[np.bool_]) -> NDArray[np.float64]:
        """The column-level regression of h on the ideal sums (stuck cells not yet accounted for)."""
        g = np.where(fit_ok, self.s_hz / self.cnt / np.maximum(self.var_s, 1e-6), 0.0)
        return np.asarray(np.where(np.isfinite(g), g, 0.0), dtype=np.float64)


def column_statistics(
    dm: DesignMatrices,
    cp: NDArray[np.int16],
    cn: NDArray[np.int16],
    valid: NDArray[np.bool_],
    lsb: float = 1.0,
) -> ColumnStats:
    """The per-column sums of a die's codes ``cp``, ``cn`` (n, n_cols) int16 under W and -W (``lsb``
    MAC per code); ``valid`` (n, n_cols) False where either code sat on an ADC rail (censored: left out
    of every statistic)."""
    mk = _Mask(valid)
    cnt = mk.cnt
    half = np.float32(0.5 * lsb)
    h = (cp - cn).astype(np.float32)  # codes are within +-2^11: no int16 overflow
    h *= half
    z_c = (cp + cn).astype(np.float32)
    z_c *= half
    cols = mk.cols
    s_c, var_s = dm.s_c, dm.var_s
    z_mean = z_c.sum(axis=0, dtype=np.float64) / cnt
    h_mean = h.sum(axis=0, dtype=np.float64) / cnt
    if mk.any_censored:
        m = mk.m
        s_c = s_c.copy()
        s_c[:, cols] = _centred(dm.s_ideal[:, cols], m, cnt[cols])
        var_s = var_s.copy()
        var_s[cols] = _sumsq(s_c[:, cols]) / cnt[cols]
        z_mean[cols] = (z_c[:, cols] * m).sum(axis=0, dtype=np.float64) / cnt[cols]
        h_mean[cols] = (h[:, cols] * m).sum(axis=0, dtype=np.float64) / cnt[cols]
        zc_cens = (z_c[:, cols] - z_mean[cols].astype(np.float32)) * m
    z_c -= z_mean.astype(np.float32)
    if mk.any_censored:
        z_c[:, cols] = zc_cens
    s_hz = np.einsum("ij,ij->j", s_c, h, dtype=np.float64)  # s_c is centred and masked
    hh = _sumsq(h) - cnt * h_mean**2
    if mk.any_censored:
        hc = (h[:, cols] - h_mean[cols].astype(np.float32)) * mk.m
        hh[cols] = _sumsq(hc)
    zz = _sumsq(z_c)
    # Stuck cells: a matched filter on z (healthy cells cancel in z; a stuck cell adds its value).
    raw = dm.ac.T @ z_c  # (rows, n_cols)
    cens_raw = raw[:, cols] if mk.any_censored else raw[:, :0]
    d_hat = raw
    d_hat *= (1.0 / dm.row_energy).astype(np.float32)[:, None]
    noise_row = 1.0 / np.sqrt(dm.row_energy)
    cens_index = np.full(cnt.size, -1, np.int64)
    noise_cens = np.zeros((dm.a.shape[1], cols.size))
    if mk.any_censored:
        energy = np.clip((dm.ac**2).T @ mk.m, 1e-9, None).astype(np.float64)
        d_hat[:, cols] = cens_raw / energy.astype(np.float32)
        noise_cens = 1.0 / np.sqrt(energy)
        cens_index[cols] = np.arange(cols.size)
    return ColumnStats(
        dm, mk, h, z_c, s_c, var_s, s_hz, hh, z_mean, zz, d_hat, noise_row, noise_cens, cens_index
    )


@dataclass
class LinearFit:
    """The linear part of the readout model, for all columns of the die stacked: (n_cols,) or (rows, n_cols)."""

    gain: NDArray[np.float64]
    offset: NDArray[np.float64]
    stuck_rows: NDArray[np.int64]  # stuck cells (rows, cols, value in {-1,+1}, score in standard errors)
    stuck_cols: NDArray[np.int64]
    stuck_value: NDArray[np.int8]
    stuck_z: NDArray[np.float64]
    cell_err: NDArray[np.float32] | None  # (rows, n_cols) posterior-mean relative errors; None: not resolved
    cell_sigma: float
    resid_sigma: float
    var_z: float
    var_s: NDArray[np.float64]  # (n_cols,) variance of the ideal sums over the valid reads
    col_var_z: NDArray[np.float64]  # (n_cols,) residual variance of z per column
    col_var_h: NDArray[np.float64]  # (n_cols,) residual variance of h per column (gain's precision)
    stuck_candidates: int = 0  # cells that pass the MAP test (or were re-read), before confirmation
    d_finite: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))  # (n_cols,)

    def stuck_mask(self, shape: tuple[int, int]) -> NDArray[np.bool_]:
        out = np.zeros(shape, bool)
        out[self.stuck_rows, self.stuck_cols] = True
        return out

    def analog(
        self, dm: DesignMatrices, a: NDArray[np.float32], sign: float, cells: bool
    ) -> NDArray[np.float32]:
        """Predicted analog values (n, n_cols) for inputs ``a`` with ``sign * W`` written."""
        rel = (1.0 + self.cell_err) if (cells and self.cell_err is not None) else np.float32(1.0)
        eff = (sign * dm.w_all * self.gain[None, :].astype(np.float32) * rel).astype(np.float32)
        eff[self.stuck_rows, self.stuck_cols] = self.stuck_value * self.gain[self.stuck_cols]
        return np.asarray(a @ eff + self.offset[None, :].astype(np.float32), dtype=np.float32)


def finalize(
    st: ColumnStats,
    live: NDArray[np.bool_],
    stuck: tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int8], NDArray[np.float64]],
    *,
    cells: bool | str,
    min_cell_r2: float,
    candidates: int = 0,
) -> LinearFit:
    """Gain, offset, residual spreads and (when resolved) per-cell errors given the stuck cells
    ``(rows, cols, values, scores)``; only the columns holding stuck cells are recomputed."""
    dm, cnt = st.dm, st.cnt
    rows, cols, values, scores = stuck
    fit_ok = live & (st.var_s > 1e-6)  # a column whose valid reads do not sweep the sums has no gain
    gain0 = st.gain0(fit_ok)
    gain = gain0.copy()
    offset = st.z_mean.copy()
    col_var_z = st.zz / cnt
    col_var_h = (st.hh - 2.0 * gain * st.s_hz + gain**2 * st.var_s * cnt) / cnt
    aff = np.unique(cols)
    h_fix_aff: NDArray[np.float32] | None = None
    if aff.size:
        # A stuck cell adds value * gain to z whatever is written, and its healthy share w * gain is
        # missing from h (it would bias the gain by one cell): correct both, in its column only.
        m, c_cnt = st.mask.sub(aff)
        pos = np.searchsorted(aff, cols)
        a_rows = dm.a[:, rows]  # (n, n_stuck)
        z_add = np.zeros((dm.a.shape[0], aff.size), np.float32)
        h_add = np.zeros_like(z_add)
        np.add.at(z_add.T, pos, (a_rows * st.d_hat[rows, cols][None, :]).T)
        np.add.at(h_add.T, pos, (a_rows * (dm.w_all[rows, cols] * gain0[cols].astype(np.float32))[None, :]).T)
        z_aff = st.z(aff) - z_add
        z_clean = _centred(z_aff, m, c_cnt)
        offset[aff] = _mean(z_aff, m, c_cnt)
        col_var_z[aff] = _sumsq(z_clean) / c_cnt
        h_fix_aff = st.h[:, aff] + h_add
        s_c = st.s_c[:, aff]
        cov = (s_c * h_fix_aff).sum(axis=0, dtype=np.float64) / c_cnt
        g = np.where(fit_ok[aff], cov / np.maximum(st.var_s[aff], 1e-6), 0.0)
        gain[aff] = np.where(np.isfinite(g), g, 0.0)
        h_corr = _centred(h_fix_aff - (gain[aff][None, :] * dm.s_ideal[:, aff]).astype(np.float32), m, c_cnt)
        col_var_h[aff] = _sumsq(h_corr) / c_cnt
    offset = np.where(live, offset, 0.0)
    col_var_h = np.maximum(col_var_h, 0.0)
    n_live = float(cnt[live].sum()) if live.any() else 1.0
    var_z = float((col_var_z * cnt)[live].sum()) / n_live if live.any() else 1.0
    var_h = float((col_var_h * cnt)[live].sum()) / n_live if live.any() else 1.0
    g2 = float((gain[live] ** 2).mean()) if live.any() else 1.0
    cell_sigma = math.sqrt(max(var_h - var_z, 0.0) / max(dm.k_eff * g2, 1e-12))

    # Per-cell errors: ridge regression = posterior mean under the N(0, cell_sigma^2) prior. The
    # posterior spread comes from the design's eigenvalues alone, so the (costly) solve runs only
    # when the errors are resolved well enough to be kept.
    tau2 = max(cell_sigma**2 * g2, 1e-10)
    lam = max(var_z, 1e-6) / tau2
    cell_err: NDArray[np.float32] | None = None
    if math.isfinite(lam) and math.isfinite(g2) and g2 > 0:
        inv_ev = 1.0 / (dm.gram_evals + lam)
        post_var = var_z * float(inv_ev.mean()) / g2
        resid_sigma = math.sqrt(min(post_var, cell_sigma**2))
        r2 = 1.0 - resid_sigma**2 / cell_sigma**2 if cell_sigma > 0 else 0.0
        if cells is True or (cells == "auto" and r2 >= min_cell_r2):
            cell_err = _cell_errors(st, gain, fit_ok, live, aff, h_fix_aff, inv_ev, rows, cols)
    else:  # no live column to learn the cell spread from: nothing resolved
        resid_sigma = cell_sigma
    return LinearFit(
        gain=gain,
        offset=offset,
        stuck_rows=rows,
        stuck_cols=cols,
        stuck_value=values,
        stuck_z=scores,
        cell_err=cell_err,
        cell_sigma=cell_sigma,
        resid_sigma=resid_sigma,
        var_z=var_z,
        var_s=st.var_s,
        col_var_z=np.asarray(col_var_z, dtype=np.float64),
        col_var_h=np.asarray(col_var_h, dtype=np.float64),
        stuck_candidates=int(candidates),
        d_finite=np.asarray(np.isfinite(st.d_hat).all(axis=0), dtype=bool),
    )


def _cell_errors(
    st: ColumnStats,
    gain: NDArray[np.float64],
    fit_ok: NDArray[np.bool_],
    live: NDArray[np.bool_],
    aff: NDArray[np.int64],
    h_fix_aff: NDArray[np.float32] | None,
    inv_ev: NDArray[np.float64],
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
) -> NDArray[np.float32]:
    """Relative cell errors (rows, n_cols): the ridge solve ``(gram + lam I)^-1 ac.T h_corr``.
    Censored reads enter as zero residuals (a slight extra shrinkage on the few columns that have them)."""
    dm, mk = st.dm, st.mask
    h = st.h
    if h_fix_aff is not None:
        h = h.copy()
        h[:, aff] = h_fix_aff
    h_corr = h - (gain[None, :] * dm.s_ideal).astype(np.float32)
    mean = h_corr.sum(axis=0, dtype=np.float64) / mk.cnt
    if mk.any_censored:
        mean[mk.cols] = (h_corr[:, mk.cols] * mk.m).sum(axis=0, dtype=np.float64) / mk.cnt[mk.cols]
    h_corr -= mean.astype(np.float32)
    if mk.any_censored:
        h_corr[:, mk.cols] *= mk.m
    v = dm.gram_evecs.astype(np.float32)
    rhs = v.T @ (dm.ac.T @ h_corr)
    delta = v @ (rhs * inv_ev.astype(np.float32)[:, None])  # g * w * e
    # Never divide by an estimated gain that is not safely positive (those columns are unusable).
    safe = fit_ok & (gain > 1e-3)
    cell_err = delta * dm.w_all / np.where(safe, gain, 1.0)[None, :].astype(np.float32)
    cell_err[:, ~safe] = 0.0
    cell_err[rows, cols] = 0.0
    cell_err[:, ~live] = 0.0
    return np.where(np.isfinite(cell_err), cell_err, 0.0).astype(np.float32)

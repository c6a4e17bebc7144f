"""Stuck cells: a statistical test on the short pass, then targeted re-reads of the suspects.

A stuck cell reads the same under W and -W, so it shows in ``z = (y+ + y-) / 2`` (where healthy
cells cancel) as ``value * magnitude`` on its row: the matched filter ``d_hat`` of
:func:`~app.calibration.characterize.fit.column_statistics` estimates it for every cell.

* :func:`stuck_test`: the MAP test against the prior stuck rate, confirmed (``stuck_min_z`` standard
  errors, magnitude within ``stuck_mag_range`` of the column gain). The prior is the die's own
  (:func:`stuck_fraction`, empirical Bayes on a histogram of every cell's log likelihood ratio)
  unless ``config.stuck_prior`` fixes one. Only cells whose ``|d_hat|`` exceeds half a cell's
  contribution can pass the MAP test, so only those (a sparse set) are examined in detail; the
  full-size work is one comparison and, for the measured prior, one histogram.
* :func:`confirm_by_rereads` (``config.reread_stuck``): every *suspect* (a MAP candidate, or a cell
  ``suspect_min_z`` standard errors from 0) is read again with a vector that drives its row alone,
  under the pattern in which a cell stuck at the suspected value differs from a healthy one. A
  healthy cell then adds ``u * gain`` to its column (``u`` the written weight), a stuck one
  ``-u * gain``. The re-read alone decides (the short pass chose the suspects, so its statistic is
  biased on them): a cell is stuck when its measured contribution is nearer a stuck cell's than a
  healthy one's and ``stuck_min_z`` standard errors from a healthy one's. With enough repeats
  (:func:`reread_reads`) that holds for every stuck suspect, so the map stays complete.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
from numpy.typing import NDArray

from app.calibration.characterize.config import CharacterizationConfig
from app.calibration.characterize.design import Design
from app.calibration.characterize.fit import ColumnStats, _centred, _sumsq
from app.calibration.transient import RetryingCalls
from hardware.chip import ChipGeometry
from hardware.driver import Driver


@dataclass(frozen=True)
class CellSet:
    """Stuck cells over the stacked columns: ``rows``, ``cols`` (flat ``macro * phys_cols + col``),
    ``values`` in {-1,+1}, ``scores`` (standard errors of the deciding statistic), ``sizes`` the
    estimated contribution of the stuck value (MAC)."""

    rows: NDArray[np.int64]
    cols: NDArray[np.int64]
    values: NDArray[np.int8]
    scores: NDArray[np.float64]
    sizes: NDArray[np.float64]

    @classmethod
    def empty(cls) -> CellSet:
        e = np.zeros(0, np.int64)
        return cls(e, e, np.zeros(0, np.int8), np.zeros(0), np.zeros(0))

    def subset(self, keep: NDArray[np.bool_]) -> CellSet:
        return CellSet(
            self.rows[keep], self.cols[keep], self.values[keep], self.scores[keep], self.sizes[keep]
        )

    def astuple(
        self,
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int8], NDArray[np.float64]]:
        return self.rows, self.cols, self.values, self.scores


@dataclass(frozen=True)
class StuckTest:
    """The short pass's verdict: ``confirmed`` cells, the MAP ``candidates`` count, ``suspects``
    (candidates and cells ``suspect_min_z`` standard errors from 0) for targeted re-reads, and the
    ``prior`` probability of a stuck cell the MAP test used (measured or configured)."""

    confirmed: CellSet
    candidates: int
    suspects: CellSet
    prior: float = 0.0


_LLR_BIN = 1.0 / 32.0
_LLR_LO, _LLR_HI = -16.0, 48.0
_LLR_CENTRES = _LLR_LO + (np.arange(int((_LLR_HI - _LLR_LO) / _LLR_BIN) + 1) + 0.5) * _LLR_BIN
"""Histogram of the cells' log likelihood ratios for :func:`stuck_fraction`: bins of 1/32 (a cell's
posterior changes by at most 1.6 % within one) over [-16, 48]; ratios beyond are counted in the end
bins. A cell at -16 or below adds at most ``pi e^-16`` to the expected stuck count, so all of them
together move the estimate by less than 1e-6 of itself; above 48 a cell is stuck whatever ``pi``."""


def _llr_counts(
    st: ColumnStats,
    abs_d: NDArray[np.float32],
    cols: NDArray[np.int64],
    mag: NDArray[np.float64],
    sd_z: NDArray[np.float64],
) -> NDArray[np.int64]:
    """The histogram (over :data:`_LLR_CENTRES`) of the log likelihood ratio, stuck against healthy,
    of every cell of the columns ``cols``: ``(|d| mag - mag^2 / 2) / s_d^2`` with ``s_d`` the
    standard error of ``d_hat`` (the statistic of the MAP test); ``abs_d`` is ``|d_hat|``. Only the
    cells whose ratio can exceed the histogram's lower end are evaluated (few on a quiet die)."""
    n_bins = _LLR_CENTRES.size
    if cols.size == 0:
        return np.zeros(n_bins, np.int64)
    var_z = np.maximum(sd_z[cols] ** 2, 1e-12)
    a = (mag[cols] / var_z).astype(np.float32)
    b = (0.5 * mag[cols] ** 2 / var_z).astype(np.float32)
    # The matched filter's energy per cell (1 / noise^2): per row, or per cell on censored columns.
    e_row = st.dm.row_energy.astype(np.float32)
    ci = st.cens_index[cols]
    cens = np.flatnonzero(ci >= 0)
    e_cens = (1.0 / st.noise_cens[:, ci[cens]] ** 2).astype(np.float32)
    e_max = np.full(cols.size, float(e_row.max()))
    if cens.size:
        e_max[cens] = e_cens.max(axis=0)
    # ratio > LO needs |d| > (b - |LO| / e) / a; with the largest energy of the column, a superset.
    thr = ((b - (-_LLR_LO) / e_max) / np.maximum(a, 1e-30)).astype(np.float32)
    sub = abs_d if cols.size == abs_d.shape[1] else abs_d[:, cols]
    sel = sub > thr[None, :]
    k = int(np.count_nonzero(sel))
    if k > sub.size // 4:
        x = sub * a  # every cell
        x -= b
        x *= e_row[:, None]
        if cens.size:
            x[:, cens] = (sub[:, cens] * a[cens] - b[cens]) * e_cens
        rest = 0
    else:
        r, c = np.nonzero(sel)
        e = e_row[r]
        if cens.size:
            pos = np.full(cols.size, -1, np.int64)
            pos[cens] = np.arange(cens.size)
            pc = pos[c]
            on = pc >= 0
            e[on] = e_cens[r[on], pc[on]]
        x = (sub[r, c] * a[c] - b[c]) * e
        rest = sub.size - k
    x -= np.float32(_LLR_LO)
    x *= np.float32(1.0 / _LLR_BIN)
    np.fmax(x, 0.0, out=x)  # fmax: a NaN ratio counts as a healthy cell
    np.minimum(x, n_bins - 1, out=x)
    counts = np.bincount(x.astype(np.int32).ravel(), minlength=n_bins)
    counts[0] += rest
    return counts


def stuck_fraction(counts: NDArray[np.int64], iterations: int = 100) -> float:
    """The fraction of stuck cells, estimated from the die's own matched-filter statistics.

    Empirical Bayes: every cell is stuck with an unknown probability ``pi``; ``counts`` is the
    histogram (:func:`_llr_counts`) of the cells' log likelihood ratios, stuck against healthy. EM on
    the two-component mixture finds the ``pi`` that makes the reads most likely; a Beta(1, 1) prior on
    ``pi`` keeps it off 0 and 1 when no cell (or every cell) looks stuck. Nothing here comes from the
    simulator: domain.md (section 2) names stuck-at cells as a defect but gives no rate.
    """
    k = np.flatnonzero(counts)
    c = counts[k].astype(np.float64)
    x = _LLR_CENTRES[k]
    n = float(c.sum())
    if n == 0:
        return 0.5
    pi = 1.0 / math.sqrt(n)  # a start between "none" and "many"; EM moves it from there
    for _ in range(iterations):
        logit = math.log(pi / (1.0 - pi))
        resp = 0.5 * (1.0 + np.tanh(0.5 * (x + logit)))  # posterior P(stuck), overflow-free
        new = (float(resp @ c) + 1.0) / (n + 2.0)
        if abs(new - pi) <= 1e-3 * pi:
            return new
        pi = new
    return pi


def stuck_test(
    st: ColumnStats, gain0: NDArray[np.float64], fit_ok: NDArray[np.bool_], config: CharacterizationConfig
) -> StuckTest:
    """The MAP test of every cell, confirmed as described in the module docstring (two passes: the
    second measures the noise of a column with its stuck cells removed, and the measured prior again).
    A measured prior is capped at even odds (a die with more stuck than healthy cells is not one the
    MAP test can read)."""
    mag_all = np.maximum(np.abs(gain0), 0.05)
    sd_z = np.sqrt(np.maximum(st.zz / st.cnt, 1e-12))
    abs_d = np.abs(st.d_hat)
    measured = config.stuck_prior is None
    counts = (
        _llr_counts(st, abs_d, np.flatnonzero(fit_ok), mag_all, sd_z) if measured else np.zeros(0, np.int64)
    )
    used = min(stuck_fraction(counts), 0.5) if config.stuck_prior is None else config.stuck_prior
    prior = math.log((1.0 - used) / used)
    # log LR > prior >= 0 needs |d| * mag > mag^2 / 2: only those cells can be candidates.
    floor = 0.5 * mag_all if prior >= 0 else np.zeros_like(mag_all)
    pr, pc = np.nonzero(abs_d > floor.astype(np.float32)[None, :])
    keep = fit_ok[pc]
    pr, pc = pr[keep].astype(np.int64), pc[keep].astype(np.int64)
    dv = st.d_hat[pr, pc].astype(np.float64)
    adv = np.abs(dv)
    nm = st.noise_at(pr, pc)
    mg = mag_all[pc]
    lo, hi = config.stuck_mag_range
    ratio = adv / mg
    stuck = np.zeros(pr.size, bool)
    cand = stuck
    for i in range(2):  # the second pass measures the noise with the stuck cells removed
        s_d = nm * sd_z[pc]
        log_lr = (adv * mg - 0.5 * mg**2) / np.maximum(s_d**2, 1e-12)
        cand = log_lr > prior
        stuck = cand & (adv >= config.stuck_min_z * s_d) & (ratio >= lo) & (ratio <= hi)
        if not stuck.any():
            break
        new_sd_z = _noise_without(st, pr[stuck], pc[stuck], sd_z)
        if measured and i == 0:
            # Only the columns holding stuck cells changed: their cells move in the histogram.
            aff = np.unique(pc[stuck])
            counts = (
                counts
                - _llr_counts(st, abs_d, aff, mag_all, sd_z)
                + _llr_counts(st, abs_d, aff, mag_all, new_sd_z)
            )
            used = min(stuck_fraction(counts), 0.5)
            prior = math.log((1.0 - used) / used)
        sd_z = new_sd_z
    s_d = np.maximum(nm * sd_z[pc], 1e-12)
    zstat = adv / s_d
    values = np.where(dv >= 0, 1, -1).astype(np.int8)
    confirmed = CellSet(pr[stuck], pc[stuck], values[stuck], zstat[stuck], adv[stuck])
    sus = cand | (zstat >= config.suspect_min_z)
    suspects = CellSet(pr[sus], pc[sus], values[sus], zstat[sus], adv[sus])
    return StuckTest(confirmed, int(cand.sum()), suspects, float(used))


def _noise_without(
    st: ColumnStats, rows: NDArray[np.int64], cols: NDArray[np.int64], sd_z: NDArray[np.float64]
) -> NDArray[np.float64]:
    """``sd_z`` with the columns holding the stuck cells (rows, cols) re-measured without them."""
    aff = np.unique(cols)
    m, c_cnt = st.mask.sub(aff)
    z_add = np.zeros((st.z_c.shape[0], aff.size), np.float32)
    np.add.at(z_add.T, np.searchsorted(aff, cols), (st.dm.a[:, rows] * st.d_hat[rows, cols][None, :]).T)
    out = sd_z.copy()
    out[aff] = np.sqrt(np.maximum(_sumsq(_centred(st.z(aff) - z_add, m, c_cnt)) / c_cnt, 1e-12))
    return out


def _gain_ref(gain: NDArray[np.float64], macro: int, p_: int) -> float:
    """The median gain of a macro's live bit lines (1 when none is live)."""
    g = np.abs(gain[macro * p_ : (macro + 1) * p_])
    return float(np.median(g[g > 0])) if (g > 0).any() else 1.0


def reread_reads(sigma_mac: float, gain: float, config: CharacterizationConfig) -> int:
    """Repeats of a suspect's row vector after which the re-read alone puts a healthy and a stuck cell
    ``2 stuck_min_z`` standard errors apart (a stuck cell adds ``-u gain`` instead of ``u gain``:
    ``2 gain`` apart against the read noise ``sigma_mac``)."""
    k = math.ceil((config.stuck_min_z * sigma_mac / max(gain, 0.05)) ** 2)
    return int(min(max(k, config.reread_min), config.reread_max))


def confirm_by_rereads(
    driver: Driver,
    calls: RetryingCalls,
    design: Design,
    suspects: CellSet,
    gain: NDArray[np.float64],
    offset: NDArray[np.float64],
    sigma_m: NDArray[np.float64],
    config: CharacterizationConfig,
    budget: int,
) -> CellSet:
    """Read every suspect's row alone (see the module docstring) and keep the cells whose contribution
    has the sign of a stuck cell. ``gain``, ``offset`` (n_cols,) the fit, ``sigma_m`` (n_macros,) the
    read noise (MAC); ``budget`` the short pass's read vectors (the re-reads add at most
    ``config.reread_fraction`` of it). Expects -W written in every macro (as :func:`measure` leaves it)."""
    g: ChipGeometry = driver.geometry()
    p_ = g.phys_cols
    if suspects.rows.size == 0:
        return CellSet.empty()
    macro, col = np.divmod(suspects.cols, p_)
    k_m = np.array(
        [reread_reads(float(sigma_m[m]), _gain_ref(gain, m, p_), config) for m in range(g.n_macros)]
    )
    # Bounded tester time: the strongest suspects first, until the re-reads reach their share of the
    # short pass's vectors (a row read once serves every suspect on it).
    order = np.argsort(-suspects.scores, kind="stable")
    key = macro[order] * g.rows + suspects.rows[order]
    first = np.zeros(order.size, bool)
    first[np.unique(key, return_index=True)[1]] = True
    cost = np.cumsum(np.where(first, k_m[macro[order]], 0))
    keep = np.zeros(order.size, bool)
    keep[order[cost <= max(config.reread_fraction * budget, k_m.max())]] = True
    if not keep.all():
        suspects = suspects.subset(keep)
        macro, col = macro[keep], col[keep]
    w = design.weights[suspects.rows, col].astype(np.int8)
    # Under -W (written now) a cell stuck at +w differs from a healthy one; stuck at -w needs W.
    under_neg = suspects.values == w
    out_rows: list[NDArray[np.int64]] = []
    out_cols: list[NDArray[np.int64]] = []
    out_vals: list[NDArray[np.int8]] = []
    out_scores: list[NDArray[np.float64]] = []
    out_sizes: list[NDArray[np.float64]] = []
    for sign, group in ((-1, under_neg), (1, ~under_neg)):
        if not group.any():
            continue
        macros = np.unique(macro[group])
        pattern = (sign * design.weights).astype(np.int8)
        restore = partial(driver.write_macros, [int(m) for m in macros], pattern)
        if sign == 1:
            calls.call(restore)
        for m in macros:
            sel = np.flatnonzero(group & (macro == m))
            rows_m = np.unique(suspects.rows[sel])
            k = int(k_m[m])
            x = np.zeros((rows_m.size * k, g.rows), np.uint8)
            x[np.arange(x.shape[0]), np.repeat(rows_m, k)] = 1
            step = max(1, config.max_vectors_per_call)
            codes = np.concatenate(
                [
                    calls.call(partial(driver.read_macro, int(m), x[i : i + step]), restore=restore)
                    for i in range(0, x.shape[0], step)
                ]
            )
            mean = codes.reshape(rows_m.size, k, p_).astype(np.float64).mean(axis=1) * g.adc_lsb_mac
            ri = np.searchsorted(rows_m, suspects.rows[sel])
            c = col[sel]
            flat = suspects.cols[sel]
            u = sign * w[sel].astype(np.float64)  # the weight written in the cell now
            mag = np.maximum(np.abs(gain[flat]), 0.05)
            # Stuck-ness in MAC: 0 for a healthy cell (it adds u * gain), ``mag`` for a stuck one (it
            # adds -u * gain). The re-read alone decides: the short pass chose the suspects, so its
            # statistic is biased upwards on them.
            s_r = 0.5 * (mag - (mean[ri, c] - offset[flat]) * u)
            se_r = 0.5 * max(float(sigma_m[m]), 1e-3) / math.sqrt(k)
            z_r = s_r / se_r
            is_stuck = (s_r >= 0.5 * mag) & (z_r >= config.stuck_min_z)
            out_rows.append(suspects.rows[sel][is_stuck])
            out_cols.append(flat[is_stuck])
            out_vals.append((-u[is_stuck]).astype(np.int8))
            out_scores.append(z_r[is_stuck])
            out_sizes.append(s_r[is_stuck])
    order_rows = np.concatenate(out_rows) if out_rows else np.zeros(0, np.int64)
    return CellSet(
        order_rows.astype(np.int64),
        np.concatenate(out_cols).astype(np.int64),
        np.concatenate(out_vals).astype(np.int8),
        np.concatenate(out_scores).astype(np.float64),
        np.concatenate(out_sizes).astype(np.float64),
    )

"""From the codes of both patterns to a :class:`~app.calibration.signature.Signature`.

:func:`fit_die` fits the die (dead and unusable bit lines, the linear fit, the short pass's stuck-cell
test, the read noise); :func:`refit_stuck` replaces the stuck cells (after targeted re-reads);
:func:`build_signature` assembles the signature. :func:`estimate_signature` does all three without
re-reads (the estimator on recorded codes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from app.calibration.characterize.adc import _estimate_edges, noise_sigma_from_repeat_var
from app.calibration.characterize.config import CharacterizationConfig
from app.calibration.characterize.design import Design, DesignMatrices, design_matrices
from app.calibration.characterize.fit import ColumnStats, LinearFit, column_statistics, finalize
from app.calibration.characterize.stuck import CellSet, StuckTest, stuck_test
from app.calibration.signature import Signature, StuckCells
from hardware.chip import ChipGeometry


@dataclass(frozen=True)
class DieFit:
    """A fitted die before its signature is assembled (all columns stacked, ``n_macros * phys_cols``)."""

    stats: ColumnStats
    fit: LinearFit
    test: StuckTest
    live: NDArray[np.bool_]
    dead: NDArray[np.bool_]
    dead_code: NDArray[np.int16]
    bad: NDArray[np.bool_]
    unusable: dict[str, NDArray[np.bool_]]
    valid: NDArray[np.bool_]
    cp: NDArray[np.int16]
    cn: NDArray[np.int16]
    sigma_m: NDArray[np.float64]  # (n_macros,) read noise, MAC
    reread: bool = False  # stuck cells decided by targeted re-reads


def fit_die(
    geometry: ChipGeometry,
    design: Design,
    dm: DesignMatrices,
    y_pos: NDArray[np.int16],
    y_neg: NDArray[np.int16],
    config: CharacterizationConfig,
    *,
    resolve_cells: bool = True,
) -> DieFit:
    """Fit the die from the codes of both patterns, ``(n, n_macros, phys_cols)`` int16 each.
    ``resolve_cells`` False leaves the per-cell errors to :func:`refit_stuck` (they cost a solve)."""
    g = geometry
    m_, p_ = g.n_macros, g.phys_cols
    lsb = g.adc_lsb_mac
    n = design.n
    # Codes outside the ADC range (a misbehaving driver) read as the nearest rail: censored below.
    cp = np.clip(y_pos.reshape(n, m_ * p_), g.code_min, g.code_max).astype(np.int16)
    cn = np.clip(y_neg.reshape(n, m_ * p_), g.code_min, g.code_max).astype(np.int16)

    # Dead bit lines: a code that never moves although the ideal sums sweep the ADC range.
    dead = (np.ptp(cp, axis=0) == 0) & (np.ptp(cn, axis=0) == 0) & (cp[0] == cn[0])
    dead_code = np.where(dead, cp[0], 0).astype(np.int16)
    live = ~dead

    # Codes on the ADC rails are censored: they are left out of every statistic of their column.
    valid = (cp > g.code_min) & (cp < g.code_max) & (cn > g.code_min) & (cn < g.code_max)
    stats = column_statistics(dm, cp, cn, valid, lsb)
    # Degenerate bit lines (no response, inverted, saturated, singular, erratic) are found after a fit
    # and the die is fitted again without them, so they bias neither the die's statistics nor anything
    # else; they end up in the signature as dead bit lines, with their reason in the meta data.
    unusable: dict[str, NDArray[np.bool_]] = {}
    fit_live = live.copy()

    def fit_columns(cols: NDArray[np.bool_], cells: bool | str = False) -> tuple[LinearFit, StuckTest]:
        fit_ok = cols & (stats.var_s > 1e-6)
        test = stuck_test(stats, stats.gain0(fit_ok), fit_ok, config)
        fit = finalize(
            stats,
            cols,
            test.confirmed.astuple(),
            cells=cells,
            min_cell_r2=config.min_cell_r2,
            candidates=test.candidates,
        )
        return fit, test

    for _ in range(3):
        fit, test = fit_columns(fit_live)
        found = _unusable_columns(fit, valid, fit_live, config)
        if not any(v.any() for v in found.values()):
            break
        for reason, cols in found.items():
            unusable[reason] = unusable.get(reason, np.zeros_like(cols)) | cols
        fit_live = fit_live & ~np.logical_or.reduce(list(found.values()))
    else:
        fit, test = fit_columns(fit_live)
    if resolve_cells and config.cells is not False:
        fit, test = fit_columns(fit_live, config.cells)
    bad = live & ~fit_live
    if bad.any():
        # An unusable bit line is recorded as dead, returning its most frequent code.
        for c in np.flatnonzero(bad):
            vals, counts = np.unique(cp[:, c], return_counts=True)
            dead_code[c] = vals[np.argmax(counts)]
        dead = dead | bad
        live = fit_live

    # Read noise from the repeated vectors (per macro, both patterns, live columns).
    nr = design.n_repeat
    if nr >= 2:
        d = np.concatenate([cp[-nr:] - cp[:nr], cn[-nr:] - cn[:nr]]).astype(np.float64)
        var_col = ((d**2).mean(axis=0) / 2.0).reshape(m_, p_)
        lm = live.reshape(m_, p_)
        var_m = np.where(lm.any(axis=1), (var_col * lm).sum(axis=1) / np.maximum(lm.sum(axis=1), 1), 0.0)
        sigma_m = noise_sigma_from_repeat_var(var_m) * lsb
    else:
        sigma_m = np.full(m_, math.sqrt(max(2 * fit.var_z - lsb * lsb / 12.0, 1e-4)))
    return DieFit(
        stats, fit, test, live, dead, dead_code, bad, unusable, valid, cp, cn, np.asarray(sigma_m, np.float64)
    )


def refit_stuck(df: DieFit, stuck: CellSet, config: CharacterizationConfig) -> DieFit:
    """The die refitted with the stuck cells ``stuck`` (e.g. confirmed by targeted re-reads)."""
    fit = finalize(
        df.stats,
        df.live,
        stuck.astuple(),
        cells=config.cells,
        min_cell_r2=config.min_cell_r2,
        candidates=int(df.test.suspects.rows.size),
    )
    return replace(df, fit=fit, reread=True)


def build_signature(
    geometry: ChipGeometry,
    design: Design,
    dm: DesignMatrices,
    df: DieFit,
    config: CharacterizationConfig,
    meta: dict[str, Any] | None = None,
) -> tuple[Signature, dict[str, float]]:
    """The signature of a fitted die, and diagnostics."""
    g = geometry
    m_, p_, r_ = g.n_macros, g.phys_cols, g.rows
    fit, live, dead = df.fit, df.live, df.dead
    r2 = 1.0 - fit.resid_sigma**2 / fit.cell_sigma**2 if fit.cell_sigma > 0 else 0.0
    keep_cells = fit.cell_err is not None
    order = np.lexsort((fit.stuck_cols, fit.stuck_rows))
    rows, cols_flat = fit.stuck_rows[order], fit.stuck_cols[order]

    gain = fit.gain.copy()
    cell_err = fit.cell_err
    if cell_err is not None:
        # The mean cell error of a column is part of its gain.
        mean_e = np.where(live, cell_err.mean(axis=0), 0.0)
        gain = gain * (1.0 + mean_e)
        cell_err = np.asarray((1.0 + cell_err) / (1.0 + mean_e)[None, :].astype(np.float32) - 1.0, np.float32)
        cell_err[:, ~live] = 0.0
        cell_err[rows, cols_flat] = 0.0

    edges: NDArray[np.float64] | None = None
    edge_prior = 0.0
    if config.edges:
        # A subsample of the reads is plenty for the edges (each edge sees many reads per column).
        sub_rows = np.arange(0, design.n_distinct, max(1, design.n_distinct // config.edge_reads))
        a_sub = dm.a[sub_rows]
        edges, edge_prior = _estimate_edges(
            g,
            np.concatenate([fit.analog(dm, a_sub, 1.0, keep_cells), fit.analog(dm, a_sub, -1.0, keep_cells)]),
            np.concatenate([df.cp[sub_rows], df.cn[sub_rows]]),
            np.repeat(df.sigma_m, p_),
            live,
            config.edge_prior_sigma_lsb,
        )

    meta = dict(meta or {})
    meta["stuck"] = {
        "candidates": int(fit.stuck_candidates),
        "confirmed": int(rows.size),
        "method": "reread" if df.reread else "statistic",
        "prior": df.test.prior,
        "prior_source": "measured" if config.stuck_prior is None else "configured",
    }
    if edges is not None:
        meta["edge_prior_sigma_lsb"] = edge_prior
    if df.bad.any():
        meta["unusable_cols"] = {
            reason: np.flatnonzero(cols).tolist()
            for reason, cols in sorted(df.unusable.items())
            if cols.any()
        }
    macro_idx, col_idx = np.divmod(cols_flat, p_)
    stuck_cells = StuckCells(
        macro_idx.astype(np.int64),
        rows.astype(np.int64),
        col_idx.astype(np.int64),
        fit.stuck_value[order].astype(np.int8),
        np.abs(gain[cols_flat]),
    )
    signature = Signature(
        geometry=g,
        gain=np.where(live, gain, 0.0).reshape(m_, p_),
        offset_mac=np.where(live, fit.offset, 0.0).reshape(m_, p_),
        noise_sigma_mac=df.sigma_m.astype(np.float32),
        cell_sigma=fit.cell_sigma,
        cell_residual_sigma=fit.resid_sigma if keep_cells else fit.cell_sigma,
        dead_cols=dead.reshape(m_, p_),
        dead_code=df.dead_code.reshape(m_, p_),
        stuck=stuck_cells,
        edge_offset_lsb=None if edges is None else edges.reshape(m_, p_, g.adc_levels - 1).astype(np.float32),
        cell_error=None if cell_err is None else cell_err.reshape(r_, m_, p_).transpose(1, 0, 2),
        meta=meta,
    )
    diag = {
        "cell_r2": float(r2),
        "rail_fraction": float((~df.valid[:, live]).mean()) if live.any() else 0.0,
        "var_z": float(fit.var_z),
        "n_unusable_cols": int(df.bad.sum()),
        "stuck_candidates": int(fit.stuck_candidates),
        "stuck_confirmed": len(stuck_cells),
        "stuck_score_min": float(fit.stuck_z.min()) if fit.stuck_z.size else 0.0,
    }
    return signature, diag


def estimate_signature(
    geometry: ChipGeometry,
    design: Design,
    y_pos: NDArray[np.int16],
    y_neg: NDArray[np.int16],
    config: CharacterizationConfig,
    meta: dict[str, Any] | None = None,
    dm: DesignMatrices | None = None,
) -> tuple[Signature, dict[str, float]]:
    """The signature from the codes of both patterns, ``(n, n_macros, phys_cols)`` int16 each (stuck
    cells by the short pass's statistic; ``dm`` the design's matrices when already computed)."""
    dm = dm if dm is not None else design_matrices(design, geometry)
    df = fit_die(geometry, design, dm, y_pos, y_neg, config)
    return build_signature(geometry, design, dm, df, config, meta)


def _unusable_columns(
    fit: LinearFit, valid: NDArray[np.bool_], live: NDArray[np.bool_], config: CharacterizationConfig
) -> dict[str, NDArray[np.bool_]]:
    """Live columns (m*p,) whose estimates are degenerate, by reason (:data:`UNUSABLE_REASONS`)."""
    n = valid.shape[0]
    n_valid = valid.sum(axis=0)
    finite = np.isfinite(fit.gain) & np.isfinite(fit.offset) & fit.d_finite & np.isfinite(fit.col_var_z)
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

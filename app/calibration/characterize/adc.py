"""The ADC side of the readout: read noise from repeated reads, decision-edge positions."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr

from hardware.chip import ChipGeometry


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

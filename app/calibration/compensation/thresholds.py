"""Per-channel integer thresholds: maximise the predicted agreement with the ideal chip's decisions
while keeping each channel's predicted firing rate at the ideal one."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from app.calibration.activations import LayerStats
from app.calibration.compensation.config import CompensationConfig
from app.calibration.compensation.precompute import boundary_sums
from app.calibration.compensation.prediction import Instance, sample_model
from hardware.chip import ChipGeometry

SCREEN_KEEP = 2
"""Candidates per channel re-scored in float64 after the float32 screen of every candidate."""


def _first_guess(
    stats: LayerStats,
    c0: int,
    nc: int,
    instances: Sequence[Instance],
    at_boundary: NDArray[np.float64] | None = None,
) -> NDArray[np.int64]:
    """Threshold (nc,): the predicted mean code sum of the samples closest to the ideal boundary."""
    if at_boundary is None:
        at_boundary = boundary_sums(stats, c0, nc)  # (nc, n_rt)
    guess = np.zeros(nc)
    for inst in instances:
        part = inst.gain * at_boundary[:, inst.row_tile] + inst.offset
        guess += np.where(inst.dead, inst.dead_code, part)
    return np.rint(guess + 0.5).astype(np.int64)


def optimise_thresholds(
    stats: LayerStats,
    c0: int,
    nc: int,
    instances: Sequence[Instance],
    geometry: ChipGeometry,
    config: CompensationConfig,
    *,
    device: torch.device | None = None,
    at_boundary: NDArray[np.float64] | None = None,
) -> tuple[NDArray[np.int32], NDArray[np.float64]]:
    """Best integer thresholds (nc,) and their predicted agreement (nc,) for one column tile.

    Every channel's search depends on its own data only, so several dies' channels (stacked
    instances, ``stats`` repeated) are searched as one, each die getting the search it would alone. ``device``: where torch scores
    the candidates (default CPU).
    """
    guess = _first_guess(stats, c0, nc, instances, at_boundary)
    model = sample_model(stats, c0, nc, instances, geometry)
    w = stats.weight[c0 : c0 + nc].astype(np.float64)
    y = stats.ideal[c0 : c0 + nc]
    rate_ideal = np.einsum("cn,cn->c", w, y.astype(np.float64))
    # agreement = sum w y p + sum w (1 - y) (1 - p); firing rate = sum w p: two weighted sums of p.
    w_split = np.stack([w * y, w * ~y], axis=1)  # (nc, 2, n)
    weights = {
        torch.float64: torch.from_numpy(w_split).to(device),
        torch.float32: torch.from_numpy(w_split.astype(np.float32)).to(device),
    }
    w_off = (w * ~y).sum(axis=1)

    def score(
        cand: NDArray[np.int64], rows: NDArray[np.intp], dtype: torch.dtype
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Predicted agreement and objective (m, n_cand) of thresholds ``cand`` of channels ``rows``."""
        every = rows.size == nc
        sums = torch.bmm(
            weights[dtype] if every else weights[dtype][rows],
            model.prob(cand, None if every else rows, device, dtype),
        )
        s64 = sums.cpu().numpy().astype(np.float64, copy=False)  # (m, 2, n_cand)
        agree = s64[:, 0] + w_off[rows, None] - s64[:, 1]
        bias = s64[:, 0] + s64[:, 1] - rate_ideal[rows, None]
        return agree, agree - config.bias_weight * bias**2

    def best_of(
        cand: NDArray[np.int64], rows: NDArray[np.intp]
    ) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.intp]]:
        # Every candidate scored in float32 (a third of the cost), then the float32 front runners
        # re-scored in float64, which decides: the float64 argmax over every candidate, unless the
        # float32 error (about 1e-6 of the objective) put the float64 best outside the front runners.
        m = np.arange(rows.size)
        k = min(SCREEN_KEEP, cand.shape[1])
        if k < cand.shape[1]:
            _, objective32 = score(cand, rows, torch.float32)
            front = np.sort(np.argsort(-objective32, axis=1, kind="stable")[:, :k], axis=1)
        else:
            front = np.broadcast_to(np.arange(k), (rows.size, k))
        agree, objective = score(np.take_along_axis(cand, front, axis=1), rows, torch.float64)
        j = np.argmax(objective, axis=1)
        best = front[m, j]
        return cand[m, best], agree[m, j], best

    offsets = np.arange(-config.window, config.window + 1)
    center = guess.copy()
    chosen = np.zeros(nc, np.int64)
    agreement = np.zeros(nc)
    # A channel whose best candidate is inside its window is settled; only the others search on.
    active = np.arange(nc)
    for _ in range(3):
        chosen[active], agreement[active], best = best_of(center[active, None] + offsets[None, :], active)
        edge = (best == 0) | (best == offsets.size - 1)
        if not np.any(edge):
            return chosen.astype(np.int32), agreement
        center[active] = np.where(edge, chosen[active], center[active])
        active = active[edge]
    # Still on the edge of the window (a guess far off, e.g. next to a dead bit line): scan the whole
    # range the channel's predicted sums span, coarsely, then refine around the best coarse candidate.
    # Per channel: a channel with a shorter span than the widest repeats its last point (a tie the
    # argmax resolves to the first), so no channel's result depends on the others searched with it.
    lo = np.floor((model.center[active] - 4.0 * model.spread[active]).min(axis=1)).astype(np.int64)
    hi = np.ceil((model.center[active] + 4.0 * model.spread[active]).max(axis=1)).astype(np.int64) + 1
    step = max(1, config.window)
    span = np.ceil((hi - lo) / step).astype(np.int64)  # (m,)
    k = np.minimum(np.arange(int(span.max()) + 1)[None, :], span[:, None])
    grid = lo[:, None] + step * k
    coarse, _, _ = best_of(np.concatenate([grid, chosen[active, None]], axis=1), active)
    chosen[active], agreement[active], _ = best_of(coarse[:, None] + offsets[None, :], active)
    return chosen.astype(np.int32), agreement

"""Compensation: a die's weight image from the model, its activation statistics and the die's signature.

No die in the loop: everything here is pure compute on what characterization measured.

The image differs from the ideal one in three ways (details and measurements in docs/calibration.md):

1. **Replicated row tiles.** Macros the model leaves idle hold copies of its row tiles; the digital
   periphery adds the codes of every tile of a layer, so ``r`` copies add ``r`` times the signal and
   only ``sqrt(r)`` times the (independent) read noise, column offsets and cell mismatch, and the
   integer threshold gets ``r`` times finer relative to the signal.
2. **Column re-routing.** A logical column whose bit line is dead (or holds stuck cells that disagree
   with the weights on busy rows) moves to a free healthy bit line: a spare, or a data column the
   layer does not use; a tile whose macro cannot be repaired moves to an idle macro.
3. **Per-channel thresholds.** For each output channel we predict, for every sampled calibration
   patch, the distribution of the summed codes on this die (gain, offset, cell errors, stuck cells,
   ADC edges, read noise, all from the signature) and choose the integer threshold that maximises
   the expected agreement with the ideal chip's decisions (weighted by the patch sample weights)
   while keeping the channel's expected firing rate equal to the ideal one (a penalty on the rate
   bias): the expected output matches the ideal.

The binary weights stay the model's: weight flips (to move an expected sum by less than one
threshold step) were measured not to pay once the tiles are copied.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr

from app.calibration.activations import ActivationStats, LayerStats
from app.calibration.signature import Signature
from hardware.chip import (
    ChipGeometry,
    ImageHeader,
    NetworkProgram,
    Tile,
    WeightImage,
    map_network,
    strip_binary_weights,
)

ALGORITHM_VERSION = "cimcal-comp-2"
"""Recorded in every image header; bump whenever the images this module computes change."""


@dataclass(frozen=True)
class CompensationConfig:
    """Knobs of the compensation (defaults are the production setting).

    replicas        : copies of every row tile; None = as many as idle macros allow, up to max_replicas
    use_cell_error  : use per-cell errors when the signature has them
    use_edges       : use the measured ADC edges when the signature has them
    reroute         : move dead / defective columns to free bit lines
    window          : half-width of the integer threshold search around the first guess (codes)
    bias_weight     : the threshold maximises ``agreement - bias_weight * bias^2``, ``bias`` being the
                      predicted firing rate minus the ideal one: unbiased channels matter more than
                      a few more agreeing decisions (see docs/calibration.md)
    """

    replicas: int | None = None
    max_replicas: int = 4
    use_cell_error: bool = True
    use_edges: bool = True
    reroute: bool = True
    window: int = 8
    bias_weight: float = 100.0


@dataclass(frozen=True)
class CompensationOutput:
    """What :func:`compensate_image` computes for one die and one model."""

    image: WeightImage
    predicted_agreement: float
    layer_agreement: dict[str, float]
    replicas: int
    rerouted_cols: int
    unrepaired_dead_cols: int
    compute_s: float
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ layout
def replicated_tiles(program: NetworkProgram, geometry: ChipGeometry, replicas: int) -> tuple[Tile, ...]:
    """The standard mapping plus ``replicas - 1`` copies of it on the next idle macros."""
    base = map_network(program, geometry)
    n_used = len(base)
    if replicas < 1 or n_used * replicas > geometry.n_macros:
        raise ValueError(f"{replicas} replicas of {n_used} macros do not fit {geometry.n_macros} macros")
    return tuple(
        Tile(
            t.layer,
            t.row_tile,
            t.col_tile,
            t.macro + k * n_used,
            t.row_start,
            t.n_rows,
            t.col_start,
            t.n_cols,
        )
        for k in range(replicas)
        for t in base
    )


def choose_replicas(program: NetworkProgram, geometry: ChipGeometry, config: CompensationConfig) -> int:
    n_used = len(map_network(program, geometry))
    most = max(1, geometry.n_macros // max(1, n_used))
    if config.replicas is not None:
        return max(1, min(config.replicas, most))
    return max(1, min(config.max_replicas, most))


def route_tile(
    tile: Tile,
    program: NetworkProgram,
    stats: ActivationStats,
    signature: Signature | None,
    *,
    reroute: bool = True,
) -> tuple[NDArray[np.int16], int, int]:
    """Column routing (cols,) int16 logical -> physical of ``tile`` on its macro; (row, moved, unrepaired).

    Dead bit lines are replaced by free live ones (spares, or data columns the tile does not use);
    then columns whose stuck cells disagree with the weights on busy rows move too, while free lines
    remain. Deterministic.
    """
    g = stats.geometry
    identity = np.arange(g.cols, dtype=np.int16)
    if signature is None or not reroute:
        dead_used = 0 if signature is None else int(signature.dead_cols[tile.macro, : tile.n_cols].sum())
        return identity, 0, dead_used
    layer = program.layer(tile.layer)
    wm = layer.weight_matrix()[
        tile.row_start : tile.row_start + tile.n_rows, tile.col_start : tile.col_start + tile.n_cols
    ]
    p_row = stats.layers[tile.layer].p_row[tile.row_start : tile.row_start + tile.n_rows]
    dead = signature.dead_cols[tile.macro]
    conflict = _stuck_conflicts(signature, tile.macro, wm, p_row)  # (n_cols, phys_cols) expected MAC error
    used = list(range(tile.n_cols))
    free = [p for p in range(g.phys_cols) if p >= tile.n_cols and not dead[p]]
    assign = {lcol: lcol for lcol in used}
    moved = 0
    for lcol in sorted(used, key=lambda c: (not dead[c], -conflict[c, c], c)):  # dead first, then worst
        if not free:
            break
        own = conflict[lcol, lcol]
        if not dead[lcol] and own < 0.25:
            continue
        best = min(free, key=lambda p: (conflict[lcol, p], p))
        if dead[lcol] or conflict[lcol, best] < own:
            assign[lcol] = best
            free.remove(best)
            moved += 1
    unrepaired = sum(1 for lcol in used if dead[assign[lcol]])
    taken = set(assign.values())
    rest = [p for p in range(g.phys_cols) if p not in taken]
    row = np.array([assign[c] if c in assign else rest.pop(0) for c in range(g.cols)], dtype=np.int16)
    return row, moved, unrepaired


def place_tiles(
    program: NetworkProgram,
    stats: ActivationStats,
    signature: Signature | None,
    replicas: int,
    *,
    reroute: bool = True,
) -> tuple[tuple[Tile, ...], NDArray[np.int16], int, int]:
    """Tiles (with ``replicas`` copies), column routing (n_macros, cols), moved and unrepaired columns.

    Each tile goes to its natural macro (the standard mapping, copies on the next idle macros)
    unless routing cannot repair that macro's dead bit lines and an idle macro can.
    """
    g = stats.geometry
    wanted = replicated_tiles(program, g, replicas)
    col_map = np.tile(np.arange(g.cols, dtype=np.int16), (g.n_macros, 1))
    natural = {t.macro for t in wanted}
    idle = [m for m in range(g.n_macros) if m not in natural]
    placed: list[Tile] = []
    moved_total = unrepaired_total = 0
    for t in wanted:
        row, moved, unrepaired = route_tile(t, program, stats, signature, reroute=reroute)
        if unrepaired and idle and reroute:
            for m in list(idle):
                cand = replace(t, macro=m)
                row2, moved2, unrep2 = route_tile(cand, program, stats, signature, reroute=reroute)
                if unrep2 < unrepaired:
                    idle.remove(m)
                    idle.append(t.macro)
                    idle.sort()
                    t, row, moved, unrepaired = cand, row2, moved2 + 1, unrep2
                    if unrepaired == 0:
                        break
        col_map[t.macro] = row
        placed.append(t)
        moved_total += moved
        unrepaired_total += unrepaired
    return tuple(placed), col_map, moved_total, unrepaired_total


def _stuck_conflicts(
    signature: Signature, macro: int, wm: NDArray[np.int8], p_row: NDArray[np.float32]
) -> NDArray[np.float64]:
    """Expected |error| (MAC) per (logical column, physical column) from stuck cells on used rows."""
    n_rows, n_cols = wm.shape
    cost = np.zeros((n_cols, signature.geometry.phys_cols), np.float64)
    s = signature.stuck
    sel = (s.macro == macro) & (s.row < n_rows)
    for r, p, v, mag in zip(s.row[sel], s.col[sel], s.value[sel], s.magnitude[sel], strict=True):
        wrong = wm[r, :] != v
        cost[wrong, p] += 2.0 * float(mag) * float(p_row[r])
    return cost


def place_routed(
    program: NetworkProgram, tiles: Sequence[Tile], col_map: NDArray[np.int16], geometry: ChipGeometry
) -> NDArray[np.int8]:
    """Macro contents (n_macros, rows, phys_cols) int8 with each logical column on its routed bit line."""
    macros = np.ones((geometry.n_macros, geometry.rows, geometry.phys_cols), dtype=np.int8)
    mats = {layer.name: layer.weight_matrix() for layer in program.binary_layers()}
    for t in tiles:
        block = mats[t.layer][t.row_start : t.row_start + t.n_rows, t.col_start : t.col_start + t.n_cols]
        macros[t.macro][: t.n_rows, col_map[t.macro, : t.n_cols]] = block
    return macros


# --------------------------------------------------------------------------------- the prediction
@dataclass
class _Instance:
    """One tile on the die, for the channels of one column tile: per-channel quantities (nc,)."""

    row_tile: int
    gain: NDArray[np.float64]
    offset: NDArray[np.float64]
    sigma: float
    dead: NDArray[np.bool_]
    dead_code: NDArray[np.float64]
    edges: NDArray[np.float64]  # (nc, levels - 1) MAC
    extra: NDArray[np.float64] | None  # (nc, n) MAC: cell-error and stuck-cell terms of each sample
    sat: NDArray[np.float64] | None = None  # (nc,) bit-line saturation level (0: none), MAC
    ir_drop: float = 0.0  # gain lost with every row of the macro active


def _clipped_normal_mean(
    mu: NDArray[np.float64], sd: NDArray[np.float64], lo: float, hi: float
) -> NDArray[np.float64]:
    a = (lo - mu) / sd
    b = (hi - mu) / sd
    pa, pb = ndtr(a), ndtr(b)
    phi_a = np.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    phi_b = np.exp(-0.5 * b * b) / math.sqrt(2 * math.pi)
    return np.asarray(lo * pa + hi * (1.0 - pb) + mu * (pb - pa) + sd * (phi_a - phi_b), dtype=np.float64)


def _code_moments(
    v: NDArray[np.float64], sd: NDArray[np.float64], edges: NDArray[np.float64], geometry: ChipGeometry
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and variance of the ADC code for analog values ``v`` (nc, n) with noise ``sd`` (nc, n).

    ``edges`` (nc, levels-1) in MAC. Where the noise is below half an LSB the staircase is evaluated
    exactly on the five nearest edges; above, the dithered ADC is linear up to the rails.
    """
    lsb = geometry.adc_lsb_mac
    lo, hi = float(geometry.code_min), float(geometry.code_max)
    # The rails only bend the mean within a few sigma of them.
    mean = v / lsb
    near = (np.abs(v) + 6.0 * sd) >= min(-lo, hi) * lsb
    if np.any(near):
        mean[near] = _clipped_normal_mean(v[near] / lsb, sd[near] / lsb, lo, hi)
    var = (sd / lsb) ** 2 + 1.0 / 12.0
    fine = sd < 0.5 * lsb
    if np.any(fine):
        ci, si = np.nonzero(fine)
        vv, ss = v[ci, si], sd[ci, si]
        k0 = np.clip(np.rint(vv / lsb), lo, hi).astype(np.int64)
        base = np.zeros_like(vv)
        e_sum = np.zeros_like(vv)
        e_sq = np.zeros_like(vv)
        lo_k = k0 - 2
        # code = (lo_k - 1) + sum_j I_j over edges j = lo_k..lo_k+4 (edges outside the ADC do not exist)
        for j in range(5):
            k = lo_k + j
            valid = (k > lo) & (k <= hi)
            idx = np.clip(k - int(lo) - 1, 0, edges.shape[1] - 1)
            p = np.where(
                valid, ndtr((vv - edges[ci, idx]) / np.maximum(ss, 1e-9)), (k <= lo).astype(np.float64)
            )
            e_sum += p
            e_sq += (2 * (j + 1) - 1) * p
        base = (lo_k - 1).astype(np.float64)
        mean[ci, si] = base + e_sum
        var[ci, si] = np.maximum(e_sq - e_sum**2, 1e-12)
    return mean, var


def _tile_extras(
    stats: LayerStats,
    program: NetworkProgram,
    layer_name: str,
    tiles: Sequence[Tile],
    col_map: NDArray[np.int16],
    signature: Signature,
    use_cells: bool,
) -> list[NDArray[np.float64] | None]:
    """Analog terms (nc, n) MAC of the sampled patches beyond ``gain * ideal sum``, per tile of one
    column tile: the per-cell errors (one matrix product per row tile, all copies at once) and the
    stuck cells (sparse)."""
    c0, nc = tiles[0].col_start, tiles[0].n_cols
    idx = stats.sample_idx[c0 : c0 + nc]  # (nc, n)
    wm_all = program.layer(layer_name).weight_matrix()
    cells = signature.cell_error is not None and use_cells
    out: list[NDArray[np.float64] | None] = [None] * len(tiles)
    if cells:
        assert signature.cell_error is not None
        rows_of = np.unique(idx)  # the pool patches some channel sampled
        where = np.searchsorted(rows_of, idx)  # (nc, n) positions in rows_of
        for rt in sorted({t.row_tile for t in tiles}):
            members = [i for i, t in enumerate(tiles) if t.row_tile == rt]
            r0, nr = tiles[members[0]].row_start, tiles[members[0]].n_rows
            wm = wm_all[r0 : r0 + nr, c0 : c0 + nc].astype(np.float32)  # (nr, nc)
            coefs = []
            for i in members:
                t = tiles[i]
                phys = col_map[t.macro, :nc].astype(np.int64)
                err = signature.cell_error[t.macro, :nr, :][:, phys]
                coefs.append(wm * err * signature.gain[t.macro, phys][None, :])  # beyond g * w, per row
            x = stats.pool[rows_of, r0 : r0 + nr].astype(np.float32)  # (u, nr)
            full = x @ np.concatenate(coefs, axis=1)  # (u, nc * copies)
            for k, i in enumerate(members):
                part = full[:, k * nc : (k + 1) * nc]
                out[i] = np.take_along_axis(part, where.T, axis=0).T.astype(np.float64)
    s = signature.stuck
    for i, t in enumerate(tiles):
        phys = col_map[t.macro, :nc].astype(np.int64)
        r0, nr = t.row_start, t.n_rows
        sel = np.flatnonzero((s.macro == t.macro) & (s.row < nr) & np.isin(s.col, phys))
        if sel.size == 0:
            continue
        prev = out[i]
        extra = prev if prev is not None else np.zeros(idx.shape, np.float64)
        col_of = {int(p): j for j, p in enumerate(phys)}
        for k in sel.tolist():
            j, r = col_of[int(s.col[k])], int(s.row[k])
            rel = (
                1.0 + float(signature.cell_error[t.macro, r, s.col[k]])
                if cells and signature.cell_error is not None
                else 1.0
            )
            healthy = float(wm_all[r0 + r, c0 + j]) * float(signature.gain[t.macro, s.col[k]]) * rel
            delta = float(s.value[k]) * float(s.magnitude[k]) - healthy
            extra[j] += delta * stats.pool[idx[j], r0 + r].astype(np.float64)
        out[i] = extra
    return out


def _instances(
    stats: LayerStats,
    program: NetworkProgram,
    layer_name: str,
    tiles: Sequence[Tile],
    col_map: NDArray[np.int16],
    signature: Signature,
    config: CompensationConfig,
) -> list[_Instance]:
    out = []
    edges_all = signature.edges_mac() if config.use_edges else None
    g = signature.geometry
    extras = _tile_extras(stats, program, layer_name, tiles, col_map, signature, config.use_cell_error)
    for t, extra in zip(tiles, extras, strict=True):
        phys = col_map[t.macro, : t.n_cols].astype(np.int64)
        if edges_all is None:
            k = np.arange(g.code_min + 1, g.code_max + 1, dtype=np.float64)
            edges = np.tile((k - 0.5) * g.adc_lsb_mac, (t.n_cols, 1))
        else:
            edges = edges_all[t.macro, phys].astype(np.float64)
        out.append(
            _Instance(
                row_tile=t.row_tile,
                gain=signature.gain[t.macro, phys].astype(np.float64),
                offset=signature.offset_mac[t.macro, phys].astype(np.float64),
                sigma=float(signature.noise_sigma_mac[t.macro]),
                dead=signature.dead_cols[t.macro, phys],
                dead_code=signature.dead_code[t.macro, phys].astype(np.float64),
                edges=edges,
                extra=extra,
                sat=None
                if signature.bl_sat_mac is None
                else signature.bl_sat_mac[t.macro, phys].astype(np.float64),
                ir_drop=0.0 if signature.ir_drop is None else float(signature.ir_drop[t.macro]),
            )
        )
    return out


@dataclass
class _SampleModel:
    """Predicted code-sum distribution of every sampled patch of one column tile (computed once).

    One tile: the analog value ``v`` and noise ``sd`` (nc, n), decided exactly against the ADC edge
    of the candidate threshold. Several tiles: mean and variance (nc, n) of the summed codes (a
    Gaussian with continuity correction).
    """

    single: _Instance | None
    center: NDArray[np.float64]
    spread: NDArray[np.float64]
    geometry: ChipGeometry

    def prob(self, candidates: NDArray[np.int64]) -> NDArray[np.float64]:
        """P(sum of codes >= T) (nc, n, n_cand) for thresholds ``candidates`` (nc, n_cand)."""
        g = self.geometry
        inst = self.single
        if inst is None:
            z = (self.center[:, :, None] - candidates[:, None, :] + 0.5) / self.spread[:, :, None]
            return np.asarray(ndtr(z), dtype=np.float64)
        t = candidates
        idx = np.clip(t - g.code_min - 1, 0, g.adc_levels - 2)
        edge = np.take_along_axis(inst.edges, idx, axis=1)  # (nc, n_cand)
        p = ndtr((self.center[:, :, None] - edge[:, None, :]) / self.spread[:, :, None])
        p = np.where((t <= g.code_min)[:, None, :], 1.0, p)
        p = np.where((t > g.code_max)[:, None, :], 0.0, p)
        if np.any(inst.dead):
            dead_p = (inst.dead_code[:, None] >= t).astype(np.float64)
            p = np.where(inst.dead[:, None, None], dead_p[:, None, :], p)
        return np.asarray(p, dtype=np.float64)


def sample_model(
    stats: LayerStats, c0: int, nc: int, instances: Sequence[_Instance], signature: Signature, use_cells: bool
) -> _SampleModel:
    """The :class:`_SampleModel` of channels c0..c0+nc on the die described by ``signature``."""
    g = signature.geometry
    resid = (
        signature.cell_residual_sigma
        if (use_cells and signature.cell_error is not None)
        else signature.cell_sigma
    )
    s_sum = stats.tile_sum[c0 : c0 + nc].astype(np.float64)  # (nc, n, n_rt)
    n_act = stats.tile_active[c0 : c0 + nc].astype(np.float64)

    def analog(inst: _Instance) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        n_rows = n_act[:, :, inst.row_tile]
        if inst.sat is None and not inst.ir_drop:
            v = inst.gain[:, None] * s_sum[:, :, inst.row_tile] + inst.offset[:, None]
            if inst.extra is not None:
                v = v + inst.extra
            sd = np.sqrt(inst.sigma**2 + (inst.gain[:, None] * resid) ** 2 * n_rows)
            return v, np.maximum(sd, 1e-9)
        # IR drop (the gain falls with the tile's active rows, the only rows its read drives), then
        # saturation; the cell-mismatch noise scales with the local slope of the transfer.
        lin = inst.gain[:, None] * s_sum[:, :, inst.row_tile]
        if inst.extra is not None:
            lin = lin + inst.extra
        slope = 1.0 - inst.ir_drop * n_rows / g.rows
        lin = lin * slope
        if inst.sat is not None:
            sat = inst.sat[:, None]
            safe = np.where(sat > 0, sat, 1.0)
            th = np.tanh(lin / safe)
            lin = np.where(sat > 0, safe * th, lin)
            slope = slope * np.where(sat > 0, 1.0 - th**2, 1.0)
        v = lin + inst.offset[:, None]
        sd = np.sqrt(inst.sigma**2 + (inst.gain[:, None] * resid * slope) ** 2 * n_rows)
        return v, np.maximum(sd, 1e-9)

    if len(instances) == 1:
        v, sd = analog(instances[0])
        return _SampleModel(instances[0], v, sd, g)
    mean = np.zeros(s_sum.shape[:2])
    var = np.zeros(s_sum.shape[:2])
    for inst in instances:
        v, sd = analog(inst)
        m, vv = _code_moments(v, sd, inst.edges, g)
        if np.any(inst.dead):
            m = np.where(inst.dead[:, None], inst.dead_code[:, None], m)
            vv = np.where(inst.dead[:, None], 0.0, vv)
        mean += m
        var += vv
    return _SampleModel(None, mean, np.sqrt(np.maximum(var, 1e-12)), g)


def _first_guess(stats: LayerStats, c0: int, nc: int, instances: Sequence[_Instance]) -> NDArray[np.int64]:
    """Threshold (nc,): the predicted mean code sum of the samples closest to the ideal boundary."""
    t_ideal = stats.threshold[c0 : c0 + nc].astype(np.float64)
    s_sum = stats.tile_sum[c0 : c0 + nc].astype(np.float64)  # (nc, n, n_rt)
    near = np.abs(s_sum.sum(axis=2) - t_ideal[:, None] + 0.5) <= 2.0
    w = np.where(near, 1.0, 1e-6)
    at_boundary = (s_sum * w[:, :, None]).sum(axis=1) / w.sum(axis=1)[:, None]  # (nc, n_rt)
    guess = np.zeros(nc)
    for inst in instances:
        part = inst.gain * at_boundary[:, inst.row_tile] + inst.offset
        guess += np.where(inst.dead, inst.dead_code, part)
    return np.rint(guess + 0.5).astype(np.int64)


def optimise_thresholds(
    stats: LayerStats,
    c0: int,
    nc: int,
    instances: Sequence[_Instance],
    signature: Signature,
    config: CompensationConfig,
) -> tuple[NDArray[np.int32], NDArray[np.float64]]:
    """Best integer thresholds (nc,) and their predicted agreement (nc,) for one column tile."""
    guess = _first_guess(stats, c0, nc, instances)
    model = sample_model(stats, c0, nc, instances, signature, config.use_cell_error)
    w = stats.weight[c0 : c0 + nc].astype(np.float64)
    y = stats.ideal[c0 : c0 + nc]
    rate_ideal = np.einsum("cn,cn->c", w, y.astype(np.float64))[:, None]
    rows = np.arange(nc)

    def best_of(cand: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.intp]]:
        p = model.prob(cand)
        agree = np.einsum("cn,cnk->ck", w, np.where(y[:, :, None], p, 1.0 - p))
        bias = np.einsum("cn,cnk->ck", w, p) - rate_ideal
        best = np.argmax(agree - config.bias_weight * bias**2, axis=1)
        return cand[rows, best], agree[rows, best], best

    offsets = np.arange(-config.window, config.window + 1)
    center = guess.copy()
    for _ in range(3):
        chosen, agreement, best = best_of(center[:, None] + offsets[None, :])
        at_edge = (best == 0) | (best == offsets.size - 1)
        if not np.any(at_edge):
            return chosen.astype(np.int32), agreement
        center = np.where(at_edge, chosen, center)
    # Still on the edge of the window (a guess far off, e.g. next to a dead bit line): scan the whole
    # range the predicted sums span, coarsely, then refine around the best coarse candidate.
    lo = np.floor((model.center - 4.0 * model.spread).min(axis=1)).astype(np.int64)
    hi = np.ceil((model.center + 4.0 * model.spread).max(axis=1)).astype(np.int64) + 1
    step = max(1, config.window)
    grid = lo[:, None] + step * np.arange(int(np.ceil((hi - lo).max() / step)) + 1)[None, :]
    coarse, _, _ = best_of(np.concatenate([grid, chosen[:, None]], axis=1))
    center = np.where(at_edge, coarse, chosen)
    chosen, agreement, _ = best_of(center[:, None] + offsets[None, :])
    return chosen.astype(np.int32), agreement


# ----------------------------------------------------------------------------------- the entry point
def compensate_image(
    program: NetworkProgram,
    stats: ActivationStats,
    signature: Signature,
    header: ImageHeader,
    config: CompensationConfig | None = None,
) -> CompensationOutput:
    """The weight image of ``program`` for the die described by ``signature`` (deterministic)."""
    t0 = time.perf_counter()
    config = config or CompensationConfig()
    g = signature.geometry
    if g != stats.geometry:
        raise ValueError("signature and activation statistics were made for different geometries")
    replicas = choose_replicas(program, g, config)
    tiles, col_map, moved, unrepaired = place_tiles(
        program, stats, signature, replicas, reroute=config.reroute
    )
    macros = place_routed(program, tiles, col_map, g)
    thresholds: dict[str, NDArray[np.int32]] = {}
    layer_agree: dict[str, float] = {}
    for layer in program.binary_layers():
        ls = stats.layers[layer.name]
        thr = np.zeros(layer.n_out, np.int32)
        agree = np.zeros(layer.n_out)
        layer_tiles = [t for t in tiles if t.layer == layer.name]
        for ct in sorted({t.col_tile for t in layer_tiles}):
            group = [t for t in layer_tiles if t.col_tile == ct]
            c0, nc = group[0].col_start, group[0].n_cols
            inst = _instances(ls, program, layer.name, group, col_map, signature, config)
            thr[c0 : c0 + nc], agree[c0 : c0 + nc] = optimise_thresholds(ls, c0, nc, inst, signature, config)
        thresholds[layer.name] = thr
        layer_agree[layer.name] = float(agree.mean())
    image = WeightImage(
        header=header,
        geometry=g,
        program=strip_binary_weights(program),
        tiles=tiles,
        macros=macros,
        col_map=col_map,
        thresholds=thresholds,
    )
    image.validate()
    notes = []
    if unrepaired:
        notes.append(f"{unrepaired} used column(s) left on a dead bit line: no free bit line in its macro")
    unusable = signature.meta.get("unusable_cols") or {}
    if unusable:
        why = ", ".join(f"{reason} {len(cols)}" for reason, cols in sorted(unusable.items()))
        notes.append(f"bit lines characterization found unusable, treated as dead: {why}")
    return CompensationOutput(
        image=image,
        predicted_agreement=float(np.mean(list(layer_agree.values()))) if layer_agree else 1.0,
        layer_agreement=layer_agree,
        replicas=replicas,
        rerouted_cols=moved,
        unrepaired_dead_cols=unrepaired,
        compute_s=time.perf_counter() - t0,
        notes=notes,
    )

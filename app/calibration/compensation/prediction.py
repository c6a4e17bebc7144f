"""The predicted distribution of every sampled calibration patch's code sum on one die.

From the signature alone (gain, offset, ADC edges, per-cell errors, stuck cells, read noise), per column
tile of a layer: one :class:`Instance` per tile copy, and their :class:`SampleModel`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.special import ndtr

from app.calibration.activations import LayerStats
from app.calibration.compensation.config import CompensationConfig
from app.calibration.compensation.precompute import ModelTables
from app.calibration.signature import Signature
from hardware.chip import ChipGeometry, Tile


@dataclass
class Instance:
    """One tile on the die, for the channels of one column tile: per-channel quantities (nc,).

    Instances of the same tile on several dies stack along the channel axis (:meth:`stack`): every
    quantity is per channel, so a lot's dies are predicted and searched as one long column tile.
    """

    row_tile: int
    gain: NDArray[np.float64]
    offset: NDArray[np.float64]
    sigma: NDArray[np.float64]  # read noise (MAC) of the tile's macro, per channel
    resid: NDArray[np.float64]  # relative cell error left unmodelled on the die, per channel
    dead: NDArray[np.bool_]
    dead_code: NDArray[np.float64]
    edges: NDArray[np.float64]  # (nc, levels - 1) MAC
    extra: NDArray[np.float64] | None  # (nc, n) MAC: cell-error and stuck-cell terms of each sample
    sat: NDArray[np.float64] | None = None  # (nc,) bit-line saturation level (0: none), MAC
    ir_drop: NDArray[np.float64] | None = None  # (nc,) gain lost with every row of the macro active

    @classmethod
    def stack(cls, parts: Sequence[Instance]) -> Instance:
        """The instances of one tile on several dies as one (channels of die 0, then die 1, ...)."""
        if len({p.row_tile for p in parts}) != 1:
            raise ValueError("only instances of the same row tile stack")
        n = parts[0].gain.shape[0]
        extras = [p.extra for p in parts]
        if all(e is None for e in extras):
            extra = None
        else:
            shape = (n, next(e for e in extras if e is not None).shape[1])
            extra = np.concatenate([e if e is not None else np.zeros(shape) for e in extras])

        def optional(arrays: list[NDArray[np.float64] | None]) -> NDArray[np.float64] | None:
            if all(a is None for a in arrays):
                return None
            return np.concatenate([np.zeros(n) if a is None else a for a in arrays])

        return cls(
            row_tile=parts[0].row_tile,
            gain=np.concatenate([p.gain for p in parts]),
            offset=np.concatenate([p.offset for p in parts]),
            sigma=np.concatenate([p.sigma for p in parts]),
            resid=np.concatenate([p.resid for p in parts]),
            dead=np.concatenate([p.dead for p in parts]),
            dead_code=np.concatenate([p.dead_code for p in parts]),
            edges=np.concatenate([p.edges for p in parts]),
            extra=extra,
            sat=optional([p.sat for p in parts]),
            ir_drop=optional([p.ir_drop for p in parts]),
        )


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


def _cell_terms(
    tables: ModelTables,
    layer_name: str,
    tiles: Sequence[Sequence[Tile]],
    col_maps: Sequence[NDArray[np.int16]],
    signatures: Sequence[Signature],
    use: Sequence[bool],
) -> list[list[NDArray[np.float64] | None]]:
    """Per-cell error terms (nc, n) MAC of the sampled patches, per die and tile of one column tile:
    one batched product per row tile over the channels' own sampled patches, with every copy of every
    die stacked (the patches, too large for the cache, are read once for all of them)."""
    out: list[list[NDArray[np.float64] | None]] = [[None] * len(ts) for ts in tiles]
    first = tiles[0]
    c0, nc = first[0].col_start, first[0].n_cols
    wm_all = tables.weights[layer_name]
    for rt in sorted({t.row_tile for ts in tiles for t in ts}):
        coefs: list[NDArray[np.float32]] = []
        where: list[tuple[int, int]] = []  # (die, tile index) of each stacked copy
        r0 = nr = 0
        for d, (ts, col_map, sig) in enumerate(zip(tiles, col_maps, signatures, strict=True)):
            if sig.cell_error is None or not use[d]:
                continue
            for i, t in enumerate(ts):
                if t.row_tile != rt:
                    continue
                r0, nr = t.row_start, t.n_rows
                wm = wm_all[r0 : r0 + nr, c0 : c0 + nc].astype(np.float32)  # (nr, nc)
                phys = col_map[t.macro, :nc].astype(np.int64)
                err = sig.cell_error[t.macro, :nr, :][:, phys]
                coefs.append(wm * err * sig.gain[t.macro, phys][None, :])  # beyond g * w, per row
                where.append((d, i))
        if not coefs:
            continue
        coef = torch.from_numpy(np.ascontiguousarray(np.stack(coefs, axis=0).transpose(2, 0, 1)))
        full = torch.bmm(coef, tables.patches(layer_name, c0, nc, r0, nr)).numpy()  # (nc, copies, n)
        for k, (d, i) in enumerate(where):
            out[d][i] = full[:, k, :].astype(np.float64)
    return out


def _stuck_terms(
    tables: ModelTables,
    layer_name: str,
    tiles: Sequence[Tile],
    col_map: NDArray[np.int16],
    signature: Signature,
    cells: bool,
    out: list[NDArray[np.float64] | None],
) -> list[NDArray[np.float64] | None]:
    """``out`` (one die's per-tile terms) plus the stuck cells' terms (sparse)."""
    stats = tables.stats.layers[layer_name]
    c0, nc = tiles[0].col_start, tiles[0].n_cols
    idx = stats.sample_idx[c0 : c0 + nc]  # (nc, n)
    wm_all = tables.weights[layer_name]
    s = signature.stuck
    if s.macro.size == 0:
        return out
    stuck_col = s.col.astype(np.int64)
    for i, t in enumerate(tiles):
        on_macro = np.flatnonzero(s.macro == t.macro)
        if on_macro.size == 0:
            continue
        phys = col_map[t.macro, :nc].astype(np.int64)
        r0, nr = t.row_start, t.n_rows
        lookup = np.full(signature.geometry.phys_cols, -1, np.int64)
        lookup[phys] = np.arange(nc)
        sel = on_macro[(s.row[on_macro] < nr) & (lookup[stuck_col[on_macro]] >= 0)]
        if sel.size == 0:
            continue
        prev = out[i]
        extra = prev if prev is not None else np.zeros(idx.shape, np.float64)
        col = stuck_col[sel]
        j, r = lookup[col], s.row[sel].astype(np.int64)
        cell_error = signature.cell_error if cells else None
        rel = 1.0 if cell_error is None else 1.0 + cell_error[t.macro, r, col].astype(np.float64)
        healthy = (
            wm_all[r0 + r, c0 + j].astype(np.float64) * signature.gain[t.macro, col].astype(np.float64) * rel
        )
        delta = s.value[sel].astype(np.float64) * s.magnitude[sel].astype(np.float64) - healthy
        # In the order of the stuck list, as one loop over the cells would add them.
        np.add.at(extra, j, delta[:, None] * stats.pool[idx[j], (r0 + r)[:, None]].astype(np.float64))
        out[i] = extra
    return out


def tile_instances(
    tables: ModelTables,
    layer_name: str,
    tiles: Sequence[Tile],
    col_map: NDArray[np.int16],
    signature: Signature,
    config: CompensationConfig,
) -> list[Instance]:
    """The :class:`Instance` of each of ``tiles`` (the tiles of one column tile) on one die."""
    return tile_instances_many(tables, layer_name, [tiles], [col_map], [signature], config)[0]


def tile_instances_many(
    tables: ModelTables,
    layer_name: str,
    tiles: Sequence[Sequence[Tile]],
    col_maps: Sequence[NDArray[np.int16]],
    signatures: Sequence[Signature],
    config: CompensationConfig,
    edges: Sequence[NDArray[np.float32] | None] | None = None,
) -> list[list[Instance]]:
    """:func:`tile_instances` of several dies (each its own tiles and routing of the same column
    tile): the same instances, the per-cell products of every die computed as one. ``edges``: each
    die's ``signature.edges_mac()`` when the caller has them (used when ``config.use_edges``)."""
    cells = config.use_cell_error
    terms = _cell_terms(tables, layer_name, tiles, col_maps, signatures, [cells] * len(signatures))
    if edges is None:
        edges = [s.edges_mac() if config.use_edges else None for s in signatures]
    return [
        _instances(ts, cm, sig, config, _stuck_terms(tables, layer_name, ts, cm, sig, cells, extra), e)
        for ts, cm, sig, extra, e in zip(tiles, col_maps, signatures, terms, edges, strict=True)
    ]


def _instances(
    tiles: Sequence[Tile],
    col_map: NDArray[np.int16],
    signature: Signature,
    config: CompensationConfig,
    extras: list[NDArray[np.float64] | None],
    edges_all: NDArray[np.float32] | None,
) -> list[Instance]:
    out = []
    g = signature.geometry
    resid = (
        signature.cell_residual_sigma
        if (config.use_cell_error and signature.cell_error is not None)
        else signature.cell_sigma
    )
    for t, extra in zip(tiles, extras, strict=True):
        phys = col_map[t.macro, : t.n_cols].astype(np.int64)
        if edges_all is None:
            k = np.arange(g.code_min + 1, g.code_max + 1, dtype=np.float64)
            edges = np.tile((k - 0.5) * g.adc_lsb_mac, (t.n_cols, 1))
        else:
            edges = edges_all[t.macro, phys].astype(np.float64)
        out.append(
            Instance(
                row_tile=t.row_tile,
                gain=signature.gain[t.macro, phys].astype(np.float64),
                offset=signature.offset_mac[t.macro, phys].astype(np.float64),
                sigma=np.full(t.n_cols, float(signature.noise_sigma_mac[t.macro])),
                resid=np.full(t.n_cols, float(resid)),
                dead=signature.dead_cols[t.macro, phys],
                dead_code=signature.dead_code[t.macro, phys].astype(np.float64),
                edges=edges,
                extra=extra,
                sat=None
                if signature.bl_sat_mac is None
                else signature.bl_sat_mac[t.macro, phys].astype(np.float64),
                ir_drop=None
                if signature.ir_drop is None
                else np.full(t.n_cols, float(signature.ir_drop[t.macro])),
            )
        )
    return out


@dataclass
class SampleModel:
    """Predicted code-sum distribution of every sampled patch of one column tile (computed once).

    One tile: the analog value ``v`` and noise ``sd`` (nc, n), decided exactly against the ADC edge
    of the candidate threshold. Several tiles: mean and variance (nc, n) of the summed codes (a
    Gaussian with continuity correction).
    """

    single: Instance | None
    center: NDArray[np.float64]
    spread: NDArray[np.float64]
    geometry: ChipGeometry
    _f32: dict[int, NDArray[np.float32]] = field(default_factory=dict, repr=False)

    def prob(
        self,
        candidates: NDArray[np.int64],
        rows: NDArray[np.intp] | None,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor:
        """P(sum of codes >= T) (m, n, n_cand) in ``dtype`` on ``device`` for thresholds ``candidates``
        (m, n_cand) of the channels ``rows`` (m,; None: every channel, in order)."""
        g = self.geometry
        inst = self.single
        np_dtype = np.float32 if dtype == torch.float32 else np.float64

        def dev(a: NDArray[np.generic]) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device)

        def pick(a: NDArray[np.generic]) -> NDArray[np.generic]:
            return a if rows is None else a[rows]

        center = dev(self._as(self.center, np_dtype, rows))[:, :, None]
        spread = dev(self._as(self.spread, np_dtype, rows))[:, :, None]
        if inst is None:
            cand = dev(candidates.astype(np_dtype))[:, None, :]
            return torch.special.ndtr((center - cand + 0.5) / spread)
        t = candidates
        idx = np.clip(t - g.code_min - 1, 0, g.adc_levels - 2)
        edge = dev(np.take_along_axis(pick(inst.edges), idx, axis=1).astype(np_dtype))  # (m, n_cand)
        p = torch.special.ndtr((center - edge[:, None, :]) / spread)
        p = torch.where(dev(t <= g.code_min)[:, None, :], 1.0, p)
        p = torch.where(dev(t > g.code_max)[:, None, :], 0.0, p)
        dead = pick(inst.dead)
        if np.any(dead):
            dead_code = inst.dead_code if rows is None else inst.dead_code[rows]
            dead_p = dev((dead_code[:, None] >= t).astype(np_dtype))
            p = torch.where(dev(dead)[:, None, None], dead_p[:, None, :], p)
        return p

    def _as(self, a: NDArray[np.float64], dtype: type, rows: NDArray[np.intp] | None) -> NDArray[np.generic]:
        """``a`` (or its ``rows``) in ``dtype``; the float32 copy of the whole array is made once."""
        if dtype is np.float64:
            return a if rows is None else a[rows]
        key = id(a)
        if self._f32.get(key) is None:
            self._f32[key] = a.astype(np.float32)
        full = self._f32[key]
        return full if rows is None else full[rows]


def sample_model(
    stats: LayerStats, c0: int, nc: int, instances: Sequence[Instance], geometry: ChipGeometry
) -> SampleModel:
    """The :class:`SampleModel` of channels c0..c0+nc (of ``stats``) predicted from ``instances``."""
    g = geometry
    s_sum = stats.tile_sum[c0 : c0 + nc].astype(np.float64)  # (nc, n, n_rt)
    n_act = stats.tile_active[c0 : c0 + nc].astype(np.float64)

    def analog(inst: Instance) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        n_rows = n_act[:, :, inst.row_tile]
        if inst.sat is None and inst.ir_drop is None:
            v = inst.gain[:, None] * s_sum[:, :, inst.row_tile] + inst.offset[:, None]
            if inst.extra is not None:
                v = v + inst.extra
            sd = np.sqrt(inst.sigma[:, None] ** 2 + (inst.gain * inst.resid)[:, None] ** 2 * n_rows)
            return v, np.maximum(sd, 1e-9)
        # IR drop (the gain falls with the tile's active rows, the only rows its read drives), then
        # saturation; the cell-mismatch noise scales with the local slope of the transfer.
        lin = inst.gain[:, None] * s_sum[:, :, inst.row_tile]
        if inst.extra is not None:
            lin = lin + inst.extra
        slope = np.ones_like(lin)
        if inst.ir_drop is not None:
            slope = 1.0 - inst.ir_drop[:, None] * n_rows / g.rows
        lin = lin * slope
        if inst.sat is not None:
            sat = inst.sat[:, None]
            safe = np.where(sat > 0, sat, 1.0)
            th = np.tanh(lin / safe)
            lin = np.where(sat > 0, safe * th, lin)
            slope = slope * np.where(sat > 0, 1.0 - th**2, 1.0)
        v = lin + inst.offset[:, None]
        sd = np.sqrt(inst.sigma[:, None] ** 2 + ((inst.gain * inst.resid)[:, None] * slope) ** 2 * n_rows)
        return v, np.maximum(sd, 1e-9)

    if len(instances) == 1:
        v, sd = analog(instances[0])
        return SampleModel(instances[0], v, sd, g)
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
    return SampleModel(None, mean, np.sqrt(np.maximum(var, 1e-12)), g)

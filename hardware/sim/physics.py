"""Readout physics of one simulated macro: one batched matrix product per read, then the ADC."""

from __future__ import annotations

import copy

import numpy as np
import torch
from numpy.typing import NDArray

from hardware.chip import ChipGeometry
from hardware.sim.variation import DieVariation

READ_BLOCK_ROWS = 2048
"""Input vectors per block of a read (see :meth:`MacroArray.read`)."""


class MacroArray:
    """The analog state of one written macro of one die.

    ``effective`` (rows, phys_cols) float32 is what each cell adds to its bit line when its word line
    is driven: the written weight (or its stuck value) times (1 + cell error) times the column gain.
    A read then applies IR drop (gain falls with the active word lines), bit-line saturation, the
    offset, read noise and the ADC with its INL bow and DNL edges (hardware/sim/variation.py).
    """

    def __init__(
        self, geometry: ChipGeometry, truth: DieVariation, macro: int, weights: NDArray[np.int8]
    ) -> None:
        self.geometry = geometry
        w = np.where(truth.stuck_mask[macro], truth.stuck_value[macro], weights).astype(np.float32)
        self.effective = np.ascontiguousarray(
            w * (1.0 + truth.cell_error[macro]) * truth.gain_ratio[macro][None, :]
        )
        self.offset_mac = truth.offset_mac[macro]
        self._ir_per_row = np.float32(truth.ir_drop[macro] / geometry.rows)
        sat = truth.bl_sat_mac[macro]
        self._sat = sat if np.all(np.isfinite(sat)) else None
        bow = truth.inl_bow_lsb[macro]
        self._bow_mac = (bow * np.float32(geometry.adc_lsb_mac)) if np.any(bow != 0) else None
        lsb = geometry.adc_lsb_mac
        # Edge into code k sits at (k - 0.5 + e) * lsb; flattened per column for one gather per read.
        levels = geometry.adc_levels
        k = np.arange(geometry.code_min + 1, geometry.code_max + 1, dtype=np.float32)
        self._edges = ((k[None, :] - 0.5 + truth.edge_offset_lsb[macro]) * lsb).reshape(-1).astype(np.float32)
        self._stride = levels - 1
        self._bounds = code_bounds(self._edges, self._stride)
        self._dead = np.flatnonzero(truth.dead_cols[macro])
        self._dead_code = truth.dead_code[macro][self._dead]
        self._subsets: dict[bytes, MacroArray] = {}

    def columns(self, cols: NDArray[np.integer]) -> MacroArray:
        """The same macro restricted to the physical bit lines ``cols`` (in that order): its reads
        return (N, len(cols)) codes, each column with the distribution it has in a full read. Cached
        per column list (an image reads the same columns of a macro on every call)."""
        key = np.asarray(cols, dtype=np.int64).tobytes()
        hit = self._subsets.get(key)
        if hit is not None:
            return hit
        c = np.asarray(cols, dtype=np.int64)
        sub = copy.copy(self)
        sub._subsets = {}
        sub.effective = np.ascontiguousarray(self.effective[:, c])
        sub.offset_mac = np.ascontiguousarray(self.offset_mac[c])
        sub._sat = None if self._sat is None else np.ascontiguousarray(self._sat[c])
        sub._bow_mac = None if self._bow_mac is None else np.ascontiguousarray(self._bow_mac[c])
        sub._edges = np.ascontiguousarray(self._edges.reshape(-1, self._stride)[c].reshape(-1))
        sub._bounds = code_bounds(sub._edges, self._stride)
        dead = np.isin(c, self._dead)
        sub._dead = np.flatnonzero(dead)
        codes = np.zeros(self.effective.shape[1], dtype=np.int16)
        codes[self._dead] = self._dead_code
        sub._dead_code = codes[c[dead]]
        self._subsets[key] = sub
        return sub

    def read(
        self,
        inputs: NDArray[np.uint8],
        noise_sigma_mac: float,
        rng: np.random.Generator,
        *,
        noise: torch.Generator | None = None,
    ) -> NDArray[np.int16]:
        """ADC codes int16 (N, phys_cols) for word-line inputs (N, rows) in {0,1}.

        The read noise comes from ``rng``, or from ``noise`` when given (torch's normal sampler, about
        3x faster than numpy's on this path: the same distribution from another stream).
        """
        v = inputs.astype(np.float32) @ self.effective
        # IR drop: every active word line draws current through the shared supply.
        active = active_lines(inputs) if self._ir_per_row else None
        n = v.shape[0]
        if n <= READ_BLOCK_ROWS:
            return self._codes(v, active, noise_sigma_mac, rng, noise)
        # The analog chain in row blocks that stay in the cache (on whole reads it is memory-bound);
        # one product for the whole read (its rounding does not depend on the blocks), the noise
        # drawn block after block in row order (the same draws as one call).
        codes = np.empty(v.shape, dtype=np.int16)
        for start in range(0, n, READ_BLOCK_ROWS):
            rows = slice(start, min(n, start + READ_BLOCK_ROWS))
            codes[rows] = self._codes(
                v[rows], None if active is None else active[rows], noise_sigma_mac, rng, noise
            )
        return codes

    def _codes(
        self,
        v: NDArray[np.float32],
        active: NDArray[np.float32] | None,
        noise_sigma_mac: float,
        rng: np.random.Generator,
        noise: torch.Generator | None,
    ) -> NDArray[np.int16]:
        """The readout after the product, in place on ``v``: IR drop, saturation, offset, noise, ADC."""
        g = self.geometry
        if active is not None:
            v *= 1.0 - self._ir_per_row * active
        if self._sat is not None:
            np.divide(v, self._sat, out=v)
            np.tanh(v, out=v)
            v *= self._sat
        v += self.offset_mac
        if noise_sigma_mac > 0:
            if noise is None:
                draw = rng.standard_normal(v.shape, dtype=np.float32)
            else:
                draw = torch.randn(v.shape, generator=noise, dtype=torch.float32).numpy()
            draw *= np.float32(noise_sigma_mac)
            v += draw
        if self._bow_mac is not None:
            bow = inl_shape(v, g)
            bow *= self._bow_mac
            v += bow
        codes = quantize_bounded(v, self._bounds, g)
        if self._dead.size:
            codes[:, self._dead] = self._dead_code
        return codes


def active_lines(inputs: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Driven word lines per input vector (N, 1) float32 for {0,1} inputs (N, rows): exact integers."""
    if inputs.flags.c_contiguous and inputs.dtype == np.uint8 and inputs.shape[1] % 8 == 0:
        # Eight {0,1} bytes per 64-bit word: its set bits count them.
        words = inputs.view(np.uint64)
        return np.bitwise_count(words).sum(axis=1, dtype=np.int32, keepdims=True).astype(np.float32)
    return inputs.sum(axis=1, dtype=np.float32, keepdims=True)


def inl_shape(v: NDArray[np.float32], g: ChipGeometry) -> NDArray[np.float32]:
    """The ADC's integral non-linearity per unit bow: ``sin(pi t)``, ``t`` from 0 at the lower rail to 1
    at the upper one (zero at both rails, largest mid-range), for analog values ``v`` (N, C)."""
    lo = (g.code_min - 0.5) * g.adc_lsb_mac
    t = v - np.float32(lo)
    t /= np.float32(g.adc_levels * g.adc_lsb_mac)
    np.clip(t, 0.0, 1.0, out=t)
    t *= np.float32(np.pi)
    return np.sin(t, out=t)


def quantize(
    v: NDArray[np.float32], edges: NDArray[np.float32], stride: int, g: ChipGeometry
) -> NDArray[np.int16]:
    """Codes of analog values ``v`` (N, C) for per-column edges (C * stride,) (edge offsets < 0.5 LSB)."""
    c0 = np.clip(np.rint(v / np.float32(g.adc_lsb_mac)), g.code_min, g.code_max).astype(np.int32)
    col_base = (np.arange(v.shape[1], dtype=np.int32) * stride)[None, :]
    lower = np.maximum(c0 - g.code_min - 1, 0) + col_base
    upper = np.minimum(c0 - g.code_min, stride - 1) + col_base
    down = (c0 > g.code_min) & (v < edges[lower])
    up = (c0 < g.code_max) & (v >= edges[upper])
    return (c0 - down + up).astype(np.int16)


def code_bounds(edges: NDArray[np.float32], stride: int) -> NDArray[np.float32]:
    """Per column, the ``stride + 2`` bounds ``-inf, edge into code_min + 1, ..., edge into code_max,
    +inf`` (flattened): code ``c`` spans ``[bounds[c - code_min], bounds[c - code_min + 1])``."""
    per_col = edges.reshape(-1, stride)
    inf = np.full((per_col.shape[0], 1), np.inf, dtype=np.float32)
    return np.ascontiguousarray(np.concatenate([-inf, per_col, inf], axis=1).reshape(-1))


def quantize_bounded(
    v: NDArray[np.float32], bounds: NDArray[np.float32], g: ChipGeometry
) -> NDArray[np.int16]:
    """:func:`quantize` with the rails folded into per-column bounds (:func:`code_bounds`): the same
    codes bit for bit, in fewer passes over ``v`` (the simulator's hot path)."""
    width = bounds.size // v.shape[1]
    c0 = np.rint(v) if g.adc_lsb_mac == 1.0 else np.rint(v / np.float32(g.adc_lsb_mac))
    np.clip(c0, g.code_min, g.code_max, out=c0)
    j = c0.astype(np.int32)
    j += (np.arange(v.shape[1], dtype=np.int32) * width - g.code_min)[None, :]
    down = v < np.take(bounds, j)
    j += 1
    up = v >= np.take(bounds, j)
    codes = c0.astype(np.int16)
    codes += up
    codes -= down
    return codes

"""Readout physics of one simulated macro: one batched matrix product per read, then the ADC."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from hardware.chip import ChipGeometry
from hardware.sim.variation import DieVariation


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
        self._dead = np.flatnonzero(truth.dead_cols[macro])
        self._dead_code = truth.dead_code[macro][self._dead]

    def read(
        self, inputs: NDArray[np.uint8], noise_sigma_mac: float, rng: np.random.Generator
    ) -> NDArray[np.int16]:
        """ADC codes int16 (N, phys_cols) for word-line inputs (N, rows) in {0,1}."""
        g = self.geometry
        a = inputs.astype(np.float32)
        v = a @ self.effective
        if self._ir_per_row:
            # IR drop: every active word line draws current through the shared supply.
            v *= 1.0 - self._ir_per_row * a.sum(axis=1, keepdims=True)
        if self._sat is not None:
            v = self._sat * np.tanh(v / self._sat)
        v += self.offset_mac
        if noise_sigma_mac > 0:
            v += rng.standard_normal(v.shape, dtype=np.float32) * np.float32(noise_sigma_mac)
        if self._bow_mac is not None:
            v += self._bow_mac * inl_shape(v, g)
        codes = quantize(v, self._edges, self._stride, g)
        if self._dead.size:
            codes[:, self._dead] = self._dead_code
        return codes


def inl_shape(v: NDArray[np.float32], g: ChipGeometry) -> NDArray[np.float32]:
    """The ADC's integral non-linearity per unit bow: ``sin(pi t)``, ``t`` from 0 at the lower rail to 1
    at the upper one (zero at both rails, largest mid-range), for analog values ``v`` (N, C)."""
    lo = (g.code_min - 0.5) * g.adc_lsb_mac
    t = np.clip((v - np.float32(lo)) / np.float32(g.adc_levels * g.adc_lsb_mac), 0.0, 1.0)
    return np.sin(np.float32(np.pi) * t).astype(np.float32)


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

"""The vendor's die physics: not the built-in simulator's model, on purpose.

Per bit line ``j`` of macro ``m`` and input vector ``a`` with ``n`` active word lines::

    dot   = sum_i a_i * w_ij * c_ij                       c_ij: cell strength, lognormal; 0 for an open cell
    bl    = v_sat * tanh(g_mj * (1 - ir_drop * n / rows) * dot / v_sat)     IR drop, then saturation
    code  = ADC_mj(bl + o_mj + noise)                     noise ~ N(0, read_noise_mac^2), per read
    ADC   : edge into code k at lsb * (k - 0.5 + bow_mj * sin(pi * t_k) + dnl_mjk), t_k in (0, 1)

The ADC's edges bow (integral non-linearity, largest mid-range) and jitter per edge (differential
non-linearity); they stay strictly increasing. An open bit line returns a fixed code. Every hidden
parameter is a pure function of ``(seed, lot, wafer, x, y)``: a BLAKE2b digest of those values
seeds a PCG64DXSM generator (the built-in simulator uses SeedSequence over other keys).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from hardware.chip import ChipGeometry
from hardware.driver import DieAddress

WAFER_RADIUS_DIES = 15.0


@dataclass(frozen=True)
class Corner:
    """Sigmas of the vendor's process at ``corner`` 1 (``corner`` multiplies every die-to-die sigma)."""

    die_gain_sigma: float = 0.04
    radial_gain_drop: float = 0.05  # gain lost at the wafer edge (times r^2)
    die_offset_sigma_mac: float = 0.8
    col_gain_sigma: float = 0.05  # lognormal
    col_offset_sigma_mac: float = 1.2
    cell_sigma: float = 0.05  # lognormal
    bow_lsb: float = 0.3  # mean INL bow; the per-column spread is half of it
    dnl_sigma_lsb: float = 0.08
    open_cell_rate: float = 1e-4
    open_col_rate: float = 1e-3


@dataclass(frozen=True)
class VendorDie:
    """Hidden truth of one vendor die. Shapes: (n_macros, phys_cols) per bit line, cells (n_macros,
    rows, phys_cols), edges (n_macros, phys_cols, levels - 1)."""

    gain: NDArray[np.float32]
    offset_mac: NDArray[np.float32]
    cell: NDArray[np.float32]
    edges_mac: NDArray[np.float32]
    open_col: NDArray[np.bool_]
    open_code: NDArray[np.int16]


def die_key(seed: int, address: DieAddress) -> int:
    text = f"acme-cim|{seed}|{address.lot_id}|{address.wafer}|{address.x}|{address.y}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=16).digest(), "little")


def vendor_die(
    seed: int, address: DieAddress, g: ChipGeometry, corner: float, c: Corner = Corner()
) -> VendorDie:
    """Draw the hidden parameters of one die (deterministic in every argument)."""
    rng = np.random.Generator(np.random.PCG64DXSM(die_key(seed, address)))
    m, r, p, levels = g.n_macros, g.rows, g.phys_cols, g.adc_levels
    r2 = (address.x**2 + address.y**2) / WAFER_RADIUS_DIES**2
    die_gain = 1.0 + rng.normal(0, c.die_gain_sigma * corner) - c.radial_gain_drop * corner * r2
    die_off = rng.normal(0, c.die_offset_sigma_mac * corner)
    gain = die_gain * np.exp(rng.normal(0, c.col_gain_sigma * corner, size=(m, p)))
    offset = die_off + rng.normal(0, c.col_offset_sigma_mac * corner, size=(m, p))
    cell = np.exp(rng.normal(0, c.cell_sigma * corner, size=(m, r, p)))
    cell[rng.random((m, r, p)) < c.open_cell_rate] = 0.0
    k = np.arange(g.code_min + 1, g.code_max + 1, dtype=np.float64)  # the code each edge leads into
    t = (k - g.code_min - 0.5) / (levels - 1)
    bow = rng.normal(c.bow_lsb * corner, 0.5 * c.bow_lsb * corner, size=(m, p, 1))
    dnl = np.clip(rng.normal(0, c.dnl_sigma_lsb * corner, size=(m, p, levels - 1)), -0.3, 0.3)
    edges = (k - 0.5 + bow * np.sin(np.pi * t) + dnl) * g.adc_lsb_mac
    open_col = rng.random((m, p)) < c.open_col_rate
    open_code = rng.integers(g.code_min, g.code_max + 1, size=(m, p))
    return VendorDie(
        gain=gain.astype(np.float32),
        offset_mac=offset.astype(np.float32),
        cell=cell.astype(np.float32),
        edges_mac=edges.astype(np.float32),
        open_col=open_col,
        open_code=open_code.astype(np.int16),
    )


class VendorMacro:
    """One written macro of a vendor die: ``read`` turns word-line inputs into ADC codes."""

    def __init__(self, g: ChipGeometry, die: VendorDie, macro: int, weights: NDArray[np.int8]) -> None:
        self.g = g
        self.strength = np.ascontiguousarray(weights.astype(np.float32) * die.cell[macro])
        self.gain = die.gain[macro]
        self.offset = die.offset_mac[macro]
        self.edges = die.edges_mac[macro]
        self.open = np.flatnonzero(die.open_col[macro])
        self.open_code = die.open_code[macro][self.open]

    def read(
        self,
        inputs: NDArray[np.uint8],
        *,
        v_sat_mac: float,
        ir_drop: float,
        noise_mac: float,
        rng: np.random.Generator,
    ) -> NDArray[np.int16]:
        """Codes int16 (N, phys_cols) for inputs (N, rows) in {0,1}."""
        a = inputs.astype(np.float32)
        dot = a @ self.strength
        droop = 1.0 - ir_drop * a.sum(axis=1, keepdims=True) / self.g.rows
        v = v_sat_mac * np.tanh(dot * self.gain * droop / v_sat_mac) + self.offset
        if noise_mac > 0:
            v += rng.normal(0.0, noise_mac, size=v.shape).astype(np.float32)
        codes = np.empty(v.shape, dtype=np.int16)
        for j in range(v.shape[1]):
            codes[:, j] = self.g.code_min + np.searchsorted(self.edges[j], v[:, j], side="right")
        if self.open.size:
            codes[:, self.open] = self.open_code
        return codes

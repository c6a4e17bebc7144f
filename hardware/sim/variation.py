"""The variation model of the simulated fleet.

A die's hidden parameters are a pure function of ``(fleet seed, lot ID, wafer, x, y)`` and the
configuration: :func:`die_variation` draws them from seed sequences keyed by those values, so the
fleet never holds more than the dies it is asked about.

Hierarchy of the defaults (sigmas; ``variation_scale`` multiplies every sigma, rates are fixed):

=========================  =================  ==============================================
source                     default            why (see shared/docs/domain.md, section 2)
=========================  =================  ==============================================
lot gain / offset          1 % / 0.2 MAC      process shift between lots
wafer radial gain/offset   2 % / 0.3 MAC      centre-to-edge bowl (times r^2, r = 1 at edge)
wafer linear gain          1 % per radius     tilt in x and y
die gain / offset          1.5 % / 0.3 MAC    die-level shift
macro gain / offset        1 % / 0.2 MAC      per-array reference and bias spread
column gain                3 %                bit-line / sense gain, "a few %"
column offset              0.9 MAC            sense-amp / ADC offset, ~0.9 MAC at R = 256
ADC edge offset            0.15 LSB           per column, per decision edge (clipped to 0.45)
cell mismatch              6 %                Vth mismatch, 5-7 % of one cell's contribution
read noise                 1.0 MAC            redrawn on every read
stuck-at cells             2e-4 per cell      not scaled
dead columns               2e-3 per column    not scaled
=========================  =================  ==============================================
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray

from hardware.chip import ChipGeometry
from hardware.driver import DieAddress

EDGE_OFFSET_CLIP_LSB = 0.45  # keeps decision edges monotonic, so one correction step finds the code


@dataclass(frozen=True)
class VariationConfig:
    """Sigmas of every variation source (fractions for gains, MAC units for offsets)."""

    variation_scale: float = 1.0
    lot_gain_sigma: float = 0.01
    lot_offset_sigma_mac: float = 0.2
    wafer_radial_gain_sigma: float = 0.02
    wafer_radial_offset_sigma_mac: float = 0.3
    wafer_linear_gain_sigma: float = 0.01
    die_gain_sigma: float = 0.015
    die_offset_sigma_mac: float = 0.3
    macro_gain_sigma: float = 0.01
    macro_offset_sigma_mac: float = 0.2
    col_gain_sigma: float = 0.03
    col_offset_sigma_mac: float = 0.9
    adc_edge_sigma_lsb: float = 0.15
    cell_sigma: float = 0.06
    read_noise_sigma_mac: float = 1.0
    stuck_cell_rate: float = 2e-4
    dead_col_rate: float = 2e-3
    wafer_radius_dies: float = 20.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must be >= 0")
        if self.stuck_cell_rate > 1 or self.dead_col_rate > 1:
            raise ValueError("defect rates must be <= 1")
        if self.wafer_radius_dies <= 0:
            raise ValueError("wafer_radius_dies must be positive")

    def sigma(self, name: str) -> float:
        return float(getattr(self, name)) * self.variation_scale


@dataclass(frozen=True)
class FaultConfig:
    """Fault injection: per-operation probabilities of a timeout or contact loss, per-die of a gross defect."""

    p_timeout: float = 0.0
    p_contact_loss: float = 0.0
    p_gross_defect: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if not 0.0 <= getattr(self, f.name) <= 1.0:
                raise ValueError(f"{f.name} must be within [0, 1]")


@dataclass(frozen=True)
class DieVariation:
    """The hidden truth of one die (ground truth: oracle use only).

    gain_ratio, offset_mac : (n_macros, phys_cols) float32
    edge_offset_lsb        : (n_macros, phys_cols, levels - 1) float32
    cell_error             : (n_macros, rows, phys_cols) float32, multiplicative
    stuck_mask             : (n_macros, rows, phys_cols) bool; stuck_value int8 in {-1,+1}
    dead_cols              : (n_macros, phys_cols) bool; dead_code int16 (code a dead column returns)
    """

    gain_ratio: NDArray[np.float32]
    offset_mac: NDArray[np.float32]
    edge_offset_lsb: NDArray[np.float32]
    cell_error: NDArray[np.float32]
    stuck_mask: NDArray[np.bool_]
    stuck_value: NDArray[np.int8]
    dead_cols: NDArray[np.bool_]
    dead_code: NDArray[np.int16]
    gross_defect: bool

    @property
    def nbytes(self) -> int:
        return sum(
            a.nbytes
            for a in (
                self.gain_ratio,
                self.offset_mac,
                self.edge_offset_lsb,
                self.cell_error,
                self.stuck_mask,
                self.stuck_value,
                self.dead_cols,
                self.dead_code,
            )
        )


def _lot_key(lot_id: str) -> int:
    return int.from_bytes(hashlib.sha256(lot_id.encode()).digest()[:8], "little")


def _rng(fleet_seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([fleet_seed & 0xFFFFFFFFFFFFFFFF, *key]))


def die_variation(
    fleet_seed: int,
    address: DieAddress,
    geometry: ChipGeometry,
    config: VariationConfig,
    faults: FaultConfig | None = None,
) -> DieVariation:
    """Draw the hidden variation of one die: deterministic in all its arguments."""
    faults = faults or FaultConfig()
    lot = _lot_key(address.lot_id)
    m, r, c = geometry.n_macros, geometry.rows, geometry.phys_cols
    s = config.sigma

    lot_rng = _rng(fleet_seed, 1, lot)
    lot_gain, lot_off = lot_rng.normal(0, s("lot_gain_sigma")), lot_rng.normal(0, s("lot_offset_sigma_mac"))

    wafer_rng = _rng(fleet_seed, 2, lot, address.wafer)
    rad_gain, rad_off = (
        wafer_rng.normal(0, s("wafer_radial_gain_sigma")),
        wafer_rng.normal(0, s("wafer_radial_offset_sigma_mac")),
    )
    lin_gx, lin_gy = wafer_rng.normal(0, s("wafer_linear_gain_sigma"), size=2)

    # Offsets of 1000 keep every coordinate non-negative for the seed sequence.
    die_rng = _rng(fleet_seed, 3, lot, address.wafer, address.x + 1000, address.y + 1000)
    xr, yr = address.x / config.wafer_radius_dies, address.y / config.wafer_radius_dies
    r2 = xr * xr + yr * yr
    die_gain = lot_gain + rad_gain * r2 + lin_gx * xr + lin_gy * yr + die_rng.normal(0, s("die_gain_sigma"))
    die_off = lot_off + rad_off * r2 + die_rng.normal(0, s("die_offset_sigma_mac"))

    macro_gain = die_rng.normal(0, s("macro_gain_sigma"), size=(m, 1))
    macro_off = die_rng.normal(0, s("macro_offset_sigma_mac"), size=(m, 1))
    col_gain = die_rng.normal(0, s("col_gain_sigma"), size=(m, c))
    col_off = die_rng.normal(0, s("col_offset_sigma_mac"), size=(m, c))
    gain = (1.0 + die_gain + macro_gain + col_gain).astype(np.float32)
    offset = (die_off + macro_off + col_off).astype(np.float32)

    edges = die_rng.normal(0, s("adc_edge_sigma_lsb"), size=(m, c, geometry.adc_levels - 1))
    edge_offsets = np.clip(edges, -EDGE_OFFSET_CLIP_LSB, EDGE_OFFSET_CLIP_LSB).astype(np.float32)

    cell = die_rng.normal(0, s("cell_sigma"), size=(m, r, c)).astype(np.float32)
    stuck_mask = die_rng.random((m, r, c)) < config.stuck_cell_rate
    stuck_value = np.where(die_rng.random((m, r, c)) < 0.5, -1, 1).astype(np.int8)
    dead = die_rng.random((m, c)) < config.dead_col_rate
    dead_code = die_rng.choice(
        np.array([geometry.code_min, 0, geometry.code_max], dtype=np.int16), size=(m, c)
    )
    gross = bool(die_rng.random() < faults.p_gross_defect)
    return DieVariation(
        gain_ratio=gain,
        offset_mac=offset,
        edge_offset_lsb=edge_offsets,
        cell_error=cell,
        stuck_mask=stuck_mask,
        stuck_value=stuck_value,
        dead_cols=dead,
        dead_code=dead_code.astype(np.int16),
        gross_defect=gross,
    )

"""The variation model of the simulated fleet.

A die's hidden parameters are a pure function of ``(fleet seed, lot ID, wafer, x, y)`` and the
configuration: :func:`die_variation` draws them from seed sequences keyed by those values, so the
fleet never holds more than the dies it is asked about.

The defaults of :class:`VariationConfig` are the ``typical`` process corner
(:mod:`hardware.sim.corners`, docs/corners.md). ``variation_scale`` multiplies the sigmas of the
static manufacturing variation only (the ``*_sigma*`` fields below except read noise); the nominal
values (mean gain shift, saturation level, IR drop, INL bow), the defect rates and the temporal read
noise are not scaled: read noise is a property of the circuit, not of the process corner.

=========================  =================  ==============================================
source                     default            why (see shared/docs/domain.md, section 2)
=========================  =================  ==============================================
lot gain / offset          1 % / 0.2 MAC      process shift between lots
wafer radial gain/offset   0 / 0 MAC (mean)   systematic centre-to-edge bowl (times r^2) ...
                           2 % / 0.3 MAC      ... and its wafer-to-wafer sigma (r = 1 at edge)
wafer linear gain          1 % per radius     tilt in x and y
die gain shift (mean)      0 %                systematic cell-current shift of the corner
die gain / offset          1.5 % / 0.3 MAC    die-level shift
macro gain / offset        1 % / 0.2 MAC      per-array reference and bias spread
column gain                3 %                bit-line / sense gain, "a few %"
column offset              0.9 MAC            sense-amp / ADC offset, ~0.9 MAC at R = 256
ADC edge offset (DNL)      0.15 LSB           per column, per decision edge (clipped to 0.45)
ADC INL bow                0 LSB, 0.5 LSB     mean / per-column sigma of a smooth bow, zero at
                                              the rails, largest mid-range
bit-line saturation        64 MAC, 5 %        ``v_sat * tanh(v / v_sat)``: v_sat / per-column
                                              lognormal sigma (0 disables saturation)
IR drop                    4 %, 1 %           gain lost with every word line active (mean / per
                                              macro sigma), proportional to active rows
cell mismatch              6 %                Vth mismatch, lognormal (never changes sign)
read noise                 1.0 MAC            redrawn on every read; not scaled by the corner
stuck-at cells             2e-4 per cell      not scaled
dead columns               2e-3 per column    not scaled
=========================  =================  ==============================================

One bit line of macro ``m`` for an input vector ``a`` with ``n`` active word lines (rows ``R``)::

    lin  = g[m, j] * (1 - ir[m] * n / R) * sum_i a_i w_ij (1 + e_ij)       e_ij = exp(N(0, s^2) - s^2/2) - 1
    v    = v_sat[m, j] * tanh(lin / v_sat[m, j]) + o[m, j] + noise
    code = ADC(v + lsb * bow[m, j] * sin(pi * t(v)))                        t: 0 .. 1 across the ADC range
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray

from hardware.chip import ChipGeometry
from hardware.driver import DieAddress

EDGE_OFFSET_CLIP_LSB = 0.45  # keeps decision edges monotonic, so one correction step finds the code


SIGNED_FIELDS = frozenset({"die_gain_mean", "wafer_radial_gain_mean", "wafer_radial_offset_mean_mac"})
"""Systematic shifts of a corner (either sign); every other field is >= 0."""

TEMPORAL_SIGMAS = frozenset({"read_noise_sigma_mac"})
"""Sigmas of temporal noise: ``variation_scale`` leaves them alone (the corner is a static property)."""


@dataclass(frozen=True)
class VariationConfig:
    """Every parameter of the die model (fractions for gains, MAC units for offsets, LSB for the ADC).

    The defaults are the ``typical`` corner. ``variation_scale`` multiplies the static sigmas
    (:meth:`sigma`); ``die_gain_mean``, ``bl_sat_mac``, ``ir_drop``, ``adc_inl_lsb``, the defect rates
    and ``read_noise_sigma_mac`` are not scaled. ``bl_sat_mac`` 0 disables bit-line saturation.
    """

    variation_scale: float = 1.0
    lot_gain_sigma: float = 0.01
    lot_offset_sigma_mac: float = 0.2
    wafer_radial_gain_mean: float = 0.0
    wafer_radial_gain_sigma: float = 0.02
    wafer_radial_offset_mean_mac: float = 0.0
    wafer_radial_offset_sigma_mac: float = 0.3
    wafer_linear_gain_sigma: float = 0.01
    die_gain_mean: float = 0.0
    die_gain_sigma: float = 0.015
    die_offset_sigma_mac: float = 0.3
    macro_gain_sigma: float = 0.01
    macro_offset_sigma_mac: float = 0.2
    col_gain_sigma: float = 0.03
    col_offset_sigma_mac: float = 0.9
    adc_edge_sigma_lsb: float = 0.15
    adc_inl_lsb: float = 0.0
    adc_inl_sigma_lsb: float = 0.5
    bl_sat_mac: float = 64.0
    bl_sat_sigma: float = 0.05
    ir_drop: float = 0.04
    ir_drop_sigma: float = 0.01
    cell_sigma: float = 0.06
    read_noise_sigma_mac: float = 1.0
    stuck_cell_rate: float = 2e-4
    dead_col_rate: float = 2e-3
    wafer_radius_dies: float = 20.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name not in SIGNED_FIELDS and getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must be >= 0")
        if not -0.9 < self.die_gain_mean < 1.0:
            raise ValueError("die_gain_mean must be within (-0.9, 1)")
        if self.stuck_cell_rate > 1 or self.dead_col_rate > 1:
            raise ValueError("defect rates must be <= 1")
        if self.ir_drop >= 1:
            raise ValueError("ir_drop must be < 1 (a fraction of the gain)")
        if self.wafer_radius_dies <= 0:
            raise ValueError("wafer_radius_dies must be positive")

    def sigma(self, name: str) -> float:
        """Sigma ``name``: times ``variation_scale`` for static variation, as configured for read noise."""
        value = float(getattr(self, name))
        return value if name in TEMPORAL_SIGMAS else value * self.variation_scale


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
    edge_offset_lsb        : (n_macros, phys_cols, levels - 1) float32 (DNL)
    inl_bow_lsb            : (n_macros, phys_cols) float32, amplitude of the INL bow
    bl_sat_mac             : (n_macros, phys_cols) float32, saturation level (inf: none)
    ir_drop                : (n_macros,) float32, gain lost with every word line active
    cell_error             : (n_macros, rows, phys_cols) float32, multiplicative, > -1
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
    inl_bow_lsb: NDArray[np.float32]
    bl_sat_mac: NDArray[np.float32]
    ir_drop: NDArray[np.float32]

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
                self.inl_bow_lsb,
                self.bl_sat_mac,
                self.ir_drop,
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
        config.wafer_radial_gain_mean + wafer_rng.normal(0, s("wafer_radial_gain_sigma")),
        config.wafer_radial_offset_mean_mac + wafer_rng.normal(0, s("wafer_radial_offset_sigma_mac")),
    )
    lin_gx, lin_gy = wafer_rng.normal(0, s("wafer_linear_gain_sigma"), size=2)

    # Offsets of 1000 keep every coordinate non-negative for the seed sequence.
    die_rng = _rng(fleet_seed, 3, lot, address.wafer, address.x + 1000, address.y + 1000)
    xr, yr = address.x / config.wafer_radius_dies, address.y / config.wafer_radius_dies
    r2 = xr * xr + yr * yr
    die_gain = (
        config.die_gain_mean
        + lot_gain
        + rad_gain * r2
        + lin_gx * xr
        + lin_gy * yr
        + die_rng.normal(0, s("die_gain_sigma"))
    )
    die_off = lot_off + rad_off * r2 + die_rng.normal(0, s("die_offset_sigma_mac"))

    macro_gain = die_rng.normal(0, s("macro_gain_sigma"), size=(m, 1))
    macro_off = die_rng.normal(0, s("macro_offset_sigma_mac"), size=(m, 1))
    col_gain = die_rng.normal(0, s("col_gain_sigma"), size=(m, c))
    col_off = die_rng.normal(0, s("col_offset_sigma_mac"), size=(m, c))
    gain = (1.0 + die_gain + macro_gain + col_gain).astype(np.float32)
    offset = (die_off + macro_off + col_off).astype(np.float32)

    edges = die_rng.normal(0, s("adc_edge_sigma_lsb"), size=(m, c, geometry.adc_levels - 1))
    edge_offsets = np.clip(edges, -EDGE_OFFSET_CLIP_LSB, EDGE_OFFSET_CLIP_LSB).astype(np.float32)

    # Lognormal with mean 1: a cell's contribution varies in size, never in sign.
    cs = s("cell_sigma")
    cell = np.expm1(die_rng.normal(-0.5 * cs * cs, cs, size=(m, r, c))).astype(np.float32)
    stuck_mask = die_rng.random((m, r, c)) < config.stuck_cell_rate
    stuck_value = np.where(die_rng.random((m, r, c)) < 0.5, -1, 1).astype(np.int8)
    dead = die_rng.random((m, c)) < config.dead_col_rate
    dead_code = die_rng.choice(
        np.array([geometry.code_min, 0, geometry.code_max], dtype=np.int16), size=(m, c)
    )
    gross = bool(die_rng.random() < faults.p_gross_defect)
    # The non-linear terms draw from their own stream, so adding them left the linear ones unchanged.
    nl_rng = _rng(fleet_seed, 4, lot, address.wafer, address.x + 1000, address.y + 1000)
    # |bow| < levels / (2 pi) keeps the ADC's transfer strictly increasing (slope >= 1/2).
    bow_max = geometry.adc_levels / (2 * np.pi)
    bow = np.clip(nl_rng.normal(config.adc_inl_lsb, s("adc_inl_sigma_lsb"), size=(m, c)), -bow_max, bow_max)
    if config.bl_sat_mac > 0:
        sat = config.bl_sat_mac * np.exp(nl_rng.normal(0, s("bl_sat_sigma"), size=(m, c)))
    else:
        sat = np.full((m, c), np.inf)
    ir = np.clip(nl_rng.normal(config.ir_drop, s("ir_drop_sigma"), size=m), 0.0, 0.95)
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
        inl_bow_lsb=bow.astype(np.float32),
        bl_sat_mac=sat.astype(np.float32),
        ir_drop=ir.astype(np.float32),
    )

"""Named process corners of the simulated fleet: each a full parameter set with the physics it stands for.

A corner is not a multiplier on every sigma: it moves the parameters that the physical effect moves
and leaves the others at the typical process (read noise, a property of the circuit, never moves).
docs/corners.md gives the justification and the measured accuracy of each corner.
``variation_scale`` (driver option) still multiplies the chosen corner's static sigmas, for sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hardware.sim.variation import VariationConfig

DEFAULT_CORNER = "typical"
"""The simulated driver's default corner: the nominal process."""

DEMO_CORNER = "slow"
"""The corner ``cimcal demo`` runs at by default: one where uncalibrated dies lose accuracy."""


@dataclass(frozen=True)
class Corner:
    """A named process corner: its parameter set and, in one line, the physical figure it stands for."""

    name: str
    stands_for: str
    variation: VariationConfig = field(default_factory=VariationConfig)


class UnknownCornerError(ValueError):
    """A corner name that is not in :data:`CORNERS`."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown process corner {name!r}; known corners: {', '.join(sorted(CORNERS))}")


_TYPICAL = VariationConfig()

CORNERS: dict[str, Corner] = {
    c.name: c
    for c in (
        Corner(
            "typical",
            "nominal process: the sigmas of domain.md section 2, mild saturation (64 MAC, twice the "
            "ADC's full scale), 4 % IR drop with every row active, an INL bow of 0.5 LSB sigma",
            _TYPICAL,
        ),
        Corner(
            "slow",
            "slow-slow corner: cell read current about 30 % below nominal against an ADC reference "
            "set for nominal current, so the gain falls and every fixed sense-amp offset voltage is "
            "a larger fraction of one cell's contribution; Vth mismatch grows relative to the "
            "smaller overdrive",
            replace(
                _TYPICAL,
                die_gain_mean=-0.3,
                die_gain_sigma=0.04,
                die_offset_sigma_mac=1.0,
                macro_offset_sigma_mac=0.4,
                col_offset_sigma_mac=2.0,
                cell_sigma=0.09,
                bl_sat_mac=96.0,
                ir_drop=0.03,
            ),
        ),
        Corner(
            "skewed",
            "systematic wafer gradients: cell current falls towards the wafer edge (25 % at the rim) "
            "and the sense amplifiers' offset rises (5 MAC at the rim), as film thickness and implant "
            "dose vary across the wafer; a tilt and wafer-to-wafer spread on top; local variation "
            "stays typical, so dies near the centre are nominal and dies near the rim are not",
            replace(
                _TYPICAL,
                lot_offset_sigma_mac=0.5,
                wafer_radial_gain_mean=-0.25,
                wafer_radial_gain_sigma=0.05,
                wafer_radial_offset_mean_mac=5.0,
                wafer_radial_offset_sigma_mac=1.0,
                wafer_linear_gain_sigma=0.04,
            ),
        ),
        Corner(
            "aggressive",
            "aggressive design point (low supply, dense array): strong cell mismatch, a few-% column "
            "gains and large sense offsets, bit-line saturation inside the ADC range, IR drop of "
            "20 % with every row active, and an ADC bow of 1.5 LSB (1 LSB sigma)",
            replace(
                _TYPICAL,
                col_gain_sigma=0.08,
                col_offset_sigma_mac=4.0,
                die_offset_sigma_mac=1.0,
                macro_offset_sigma_mac=0.5,
                adc_edge_sigma_lsb=0.3,
                adc_inl_lsb=1.5,
                adc_inl_sigma_lsb=1.0,
                bl_sat_mac=24.0,
                bl_sat_sigma=0.1,
                ir_drop=0.2,
                ir_drop_sigma=0.03,
                cell_sigma=0.12,
            ),
        ),
    )
}
"""Every named corner, by name."""


def corner_variation(name: str, variation_scale: float = 1.0) -> VariationConfig:
    """The variation model of corner ``name`` with its static sigmas times ``variation_scale``."""
    corner = CORNERS.get(name)
    if corner is None:
        raise UnknownCornerError(name)
    return replace(corner.variation, variation_scale=variation_scale)


def corner_of(variation: VariationConfig) -> str:
    """The name of the corner ``variation`` is (at any ``variation_scale``), or ``"custom"``."""
    for name, corner in CORNERS.items():
        if replace(corner.variation, variation_scale=variation.variation_scale) == variation:
            return name
    return "custom"


def linear_twin(variation: VariationConfig) -> VariationConfig:
    """``variation`` without bit-line saturation, IR drop and INL bow, all else identical: the same
    dies (those terms draw from their own seed stream) as the linear model a signature describes."""
    return replace(
        variation, bl_sat_mac=0.0, ir_drop=0.0, ir_drop_sigma=0.0, adc_inl_lsb=0.0, adc_inl_sigma_lsb=0.0
    )

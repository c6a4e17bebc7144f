from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hardware.chip import ChipGeometry
from hardware.driver import DieAddress
from hardware.sim.corners import (
    CORNERS,
    DEFAULT_CORNER,
    UnknownCornerError,
    corner_of,
    corner_variation,
)
from hardware.sim.variation import FaultConfig, VariationConfig, die_variation

GEO = ChipGeometry()
A = DieAddress("LOT7", 3, 4, -5)


def test_same_die_gives_identical_variation() -> None:
    a = die_variation(11, A, GEO, VariationConfig())
    b = die_variation(11, A, GEO, VariationConfig())
    for name in ("gain_ratio", "offset_mac", "edge_offset_lsb", "cell_error", "stuck_mask", "dead_cols"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize(
    "other",
    [
        (12, A),
        (11, DieAddress("LOT8", 3, 4, -5)),
        (11, DieAddress("LOT7", 4, 4, -5)),
        (11, DieAddress("LOT7", 3, 5, -5)),
        (11, DieAddress("LOT7", 3, 4, -4)),
    ],
)
def test_different_dies_differ(other: tuple[int, DieAddress]) -> None:
    a = die_variation(11, A, GEO, VariationConfig())
    b = die_variation(other[0], other[1], GEO, VariationConfig())
    assert not np.array_equal(a.cell_error, b.cell_error)
    assert not np.array_equal(a.offset_mac, b.offset_mac)


def test_statistics_match_the_configured_sigmas() -> None:
    """Within-die spreads match the configured sigmas (die- and wafer-level terms are constant in a die)."""
    cfg = VariationConfig(variation_scale=1.5)
    v = die_variation(5, A, GEO, cfg)
    n_cells = v.cell_error.size
    # Sample standard deviation of N normals has relative standard error ~ 1/sqrt(2N).
    assert v.cell_error.std() == pytest.approx(0.06 * 1.5, rel=5 / np.sqrt(2 * n_cells))
    col_gain = v.gain_ratio - v.gain_ratio.mean(axis=1, keepdims=True)
    assert col_gain.std() == pytest.approx(0.03 * 1.5, rel=0.1)
    col_off = v.offset_mac - v.offset_mac.mean(axis=1, keepdims=True)
    assert col_off.std() == pytest.approx(0.9 * 1.5, rel=0.1)
    # Edge offsets are clipped at 0.45 LSB, which at sigma 0.225 trims the tails by a few %.
    assert v.edge_offset_lsb.std() == pytest.approx(0.15 * 1.5, rel=0.1)
    assert np.abs(v.edge_offset_lsb).max() <= 0.45 + 1e-6
    assert v.stuck_mask.mean() == pytest.approx(2e-4, rel=0.5)


def test_defect_rates_are_configurable() -> None:
    v = die_variation(5, A, GEO, VariationConfig(stuck_cell_rate=0.01, dead_col_rate=0.1))
    assert v.stuck_mask.mean() == pytest.approx(0.01, rel=0.1)
    assert v.dead_cols.mean() == pytest.approx(0.1, rel=0.35)


def test_scale_zero_is_an_ideal_die() -> None:
    v = die_variation(5, A, GEO, VariationConfig(variation_scale=0.0, stuck_cell_rate=0, dead_col_rate=0))
    assert np.all(v.gain_ratio == 1) and np.all(v.offset_mac == 0) and np.all(v.cell_error == 0)


def test_gross_defect_probability() -> None:
    dies = [DieAddress("LOTG", 1, x, 0) for x in range(200)]
    gross = [
        die_variation(1, d, GEO, VariationConfig(), FaultConfig(p_gross_defect=0.2)).gross_defect
        for d in dies
    ]
    assert 0.1 < np.mean(gross) < 0.3


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ValueError):
        VariationConfig(col_gain_sigma=-1)
    with pytest.raises(ValueError):
        FaultConfig(p_timeout=1.5)


def test_same_die_gives_identical_non_linear_terms() -> None:
    cfg = corner_variation("aggressive")
    a, b = die_variation(11, A, GEO, cfg), die_variation(11, A, GEO, cfg)
    for name in ("inl_bow_lsb", "bl_sat_mac", "ir_drop"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    other = die_variation(11, DieAddress("LOT7", 3, 4, -4), GEO, cfg)
    assert not np.array_equal(a.bl_sat_mac, other.bl_sat_mac)


@pytest.mark.parametrize("corner", sorted(CORNERS))
def test_cell_mismatch_is_lognormal_and_never_changes_a_cells_sign(corner: str) -> None:
    """Even at five times a corner's sigmas, no cell's contribution is zero or of the other sign."""
    v = die_variation(5, A, GEO, corner_variation(corner, variation_scale=5.0))
    assert v.cell_error.min() > -1.0
    log_cell = np.log1p(v.cell_error.astype(np.float64))
    sigma = CORNERS[corner].variation.cell_sigma * 5.0
    assert log_cell.std() == pytest.approx(sigma, rel=0.01)
    assert float(np.mean(1.0 + v.cell_error)) == pytest.approx(1.0, abs=0.01)  # mean-preserving


def test_variation_scale_leaves_read_noise_and_nominal_terms_alone() -> None:
    for corner in CORNERS:
        cfg = corner_variation(corner, variation_scale=4.0)
        assert cfg.sigma("read_noise_sigma_mac") == 1.0
        assert cfg.sigma("col_offset_sigma_mac") == 4.0 * CORNERS[corner].variation.col_offset_sigma_mac
        assert cfg.bl_sat_mac == CORNERS[corner].variation.bl_sat_mac
    assert {c.variation.read_noise_sigma_mac for c in CORNERS.values()} == {1.0}


def test_the_linear_terms_do_not_depend_on_the_non_linear_ones() -> None:
    """Switching saturation, IR drop and INL off leaves the same die (they draw from their own stream)."""
    cfg = corner_variation("aggressive")
    linear = replace(
        cfg, bl_sat_mac=0.0, ir_drop=0.0, ir_drop_sigma=0.0, adc_inl_lsb=0.0, adc_inl_sigma_lsb=0.0
    )
    a, b = die_variation(3, A, GEO, cfg), die_variation(3, A, GEO, linear)
    for name in ("gain_ratio", "offset_mac", "edge_offset_lsb", "cell_error", "stuck_mask", "dead_cols"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.all(np.isinf(b.bl_sat_mac)) and np.all(b.ir_drop == 0) and np.all(b.inl_bow_lsb == 0)


def test_every_corner_is_a_full_named_parameter_set() -> None:
    assert {"typical", "slow", "skewed", "aggressive"} <= set(CORNERS)
    assert CORNERS[DEFAULT_CORNER].variation == VariationConfig()
    for name, corner in CORNERS.items():
        assert corner.name == name and corner.stands_for
        assert corner_variation(name) == corner.variation
        assert corner_of(corner_variation(name, 2.5)) == name
    # Distinct parameter sets, not one set under different multipliers.
    assert len({c.variation for c in CORNERS.values()}) == len(CORNERS)
    assert corner_of(VariationConfig(col_offset_sigma_mac=7.0)) == "custom"


def test_an_unknown_corner_is_a_clear_error() -> None:
    with pytest.raises(
        UnknownCornerError, match=r"unknown process corner 'fast'.*aggressive, skewed, slow, typical"
    ):
        corner_variation("fast")

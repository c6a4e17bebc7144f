from __future__ import annotations

import numpy as np
import pytest

from hardware.chip import ChipGeometry
from hardware.driver import DieAddress
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

"""Small chips, tiny synthetic networks and simulated dies for the calibration tests.

The oracle (the simulator's hidden truth) is used for checking only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray

from app.calibration.synthetic import ideal_predictions, synthetic_features, synthetic_program
from hardware.chip import ChipGeometry, NetworkProgram
from hardware.driver import DieAddress
from hardware.sim.corners import linear_twin
from hardware.sim.driver import FleetConfig, SimulatedDriver, SimulatedFleet
from hardware.sim.variation import FaultConfig, VariationConfig

SMALL = ChipGeometry(n_macros=8, rows=64, cols=16, spare_cols=2)
ADDRESS = DieAddress("LOTT", 1, 2, -3)
SMALL_BUDGET = 8 * 2 * 384  # read vectors per die: 384 per macro and pattern


def fleet_config(
    scale: float = 1.0,
    *,
    dead_col_rate: float = 2e-3,
    stuck_cell_rate: float = 2e-4,
    p_timeout: float = 0.0,
    read_noise_sigma_mac: float = 1.0,
) -> FleetConfig:
    """The typical corner's linear twin: the estimators are checked against the linear model a
    signature describes (bench/corners.py measures what the non-linear terms cost)."""
    return FleetConfig(
        seed=11,
        geometry=SMALL,
        variation=linear_twin(
            VariationConfig(
                variation_scale=scale,
                dead_col_rate=dead_col_rate,
                stuck_cell_rate=stuck_cell_rate,
                read_noise_sigma_mac=read_noise_sigma_mac,
            )
        ),
        faults=FaultConfig(p_timeout=p_timeout),
    )


@pytest.fixture
def make_driver() -> Callable[..., SimulatedDriver]:
    """A connected driver with ``ADDRESS`` probed, on a fleet built by :func:`fleet_config`."""

    def make(scale: float = 1.0, *, noise_seed: int = 0, **kw: float) -> SimulatedDriver:
        drv = SimulatedDriver(
            fleet=SimulatedFleet(fleet_config(scale, **kw)), noise_seed=noise_seed
        ).connect()
        drv.probe(ADDRESS)
        return drv

    return make


@pytest.fixture(scope="session")
def tiny() -> tuple[NetworkProgram, NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]]:
    """(program, calibration features, test features, test labels = ideal-chip predictions)."""
    rng = np.random.default_rng(3)
    calib = synthetic_features(48, (1, 8, 8), rng)
    program = synthetic_program(
        rng,
        input_shape=(1, 8, 8),
        channels=(8, 16, 12),
        n_classes=3,
        pools=(2, 1),
        calib_features=calib,
        geometry=SMALL,
    )
    test = synthetic_features(96, (1, 8, 8), np.random.default_rng(4))
    return program, calib, test, ideal_predictions(program, test, SMALL)

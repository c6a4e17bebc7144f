"""ORACLE: signatures read from the simulator's hidden ground truth. Benchmarks and tests only.

Nothing that serves a chip imports this module (tests/test_layering.py keeps ``app`` from importing
the simulator's truth). It gives the upper bound of the compensation algorithm: the same
:func:`app.calibration.compensate.compensate_image` fed with a perfect signature.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from app.calibration.signature import Signature, StuckCells
from hardware.driver import DieAddress, Driver
from hardware.sim.driver import FleetConfig, SimulatedDriver
from hardware.sim.oracle import oracle_die_truth


def oracle_signature(config: FleetConfig, address: DieAddress, *, nonlinear: bool = False) -> Signature:
    """ORACLE: the exact signature of one simulated die (every field from the hidden truth); with
    ``nonlinear`` also its bit-line saturation and IR drop (the INL bow has no signature field)."""
    truth = oracle_die_truth(config, address)
    g = config.geometry
    m, r, p = np.nonzero(truth.stuck_mask)
    cell_sigma = config.variation.sigma("cell_sigma")
    gain = np.where(truth.dead_cols, 0.0, truth.gain_ratio)
    return Signature(
        geometry=g,
        gain=gain,
        offset_mac=np.where(truth.dead_cols, 0.0, truth.offset_mac),
        noise_sigma_mac=np.full(g.n_macros, config.variation.sigma("read_noise_sigma_mac"), np.float32),
        cell_sigma=cell_sigma,
        cell_residual_sigma=0.0,
        dead_cols=truth.dead_cols,
        dead_code=truth.dead_code,
        stuck=StuckCells(
            m,
            r,
            p,
            truth.stuck_value[m, r, p],
            truth.gain_ratio[m, p] * (1.0 + truth.cell_error[m, r, p]),
        ),
        edge_offset_lsb=truth.edge_offset_lsb,
        cell_error=truth.cell_error,
        bl_sat_mac=truth.bl_sat_mac if nonlinear else None,
        ir_drop=truth.ir_drop if nonlinear else None,
        meta={"source": "ORACLE"},
    )


OracleSignature = Callable[[DieAddress], Signature]


def oracle_for(driver: Driver) -> OracleSignature | None:
    """ORACLE: the exact signatures of the dies behind ``driver``, where the driver offers them.

    The built-in simulator does (its hidden truth); a vendor's simulator offers one with a method
    ``oracle_signature(address) -> app.calibration.signature.Signature``; a real tester has none, and
    the benchmark then reports no ORACLE column.
    """
    if isinstance(driver, SimulatedDriver):
        config = driver.fleet.config
        return lambda address: oracle_signature(config, address)
    offered = getattr(driver, "oracle_signature", None)
    return offered if callable(offered) else None

"""ORACLE: the simulator's hidden ground truth, for tests and benchmarks only.

Nothing that serves a chip may import this module: calibration uses only what the driver measured.
A test (tests/test_layering.py) keeps ``app`` from importing it outside ``bench``-only code paths.
"""

from __future__ import annotations

from hardware.driver import DieAddress
from hardware.sim.driver import FleetConfig
from hardware.sim.variation import DieVariation, die_variation


def oracle_die_truth(config: FleetConfig, address: DieAddress) -> DieVariation:
    """ORACLE: the hidden variation of one die of the fleet ``config``."""
    return die_variation(config.seed, address, config.geometry, config.variation, config.faults)

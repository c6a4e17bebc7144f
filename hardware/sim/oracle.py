"""ORACLE: the simulator's hidden ground truth, for tests and benchmarks only.

This module is the one way to the truth: the simulated driver keeps its fleet, the probed die's
variation and the written arrays private (name-mangled), and this module alone reaches into them.
Nothing that serves a chip may import it: calibration uses only what the driver measured. The
import-linter contracts in pyproject.toml forbid ``app`` from importing ``hardware.sim`` at all, and
tests/test_layering.py catches the dynamic forms (importlib, string names, private attributes).
"""

from __future__ import annotations

from hardware.driver import DieAddress
from hardware.sim.driver import FleetConfig, SimulatedDriver, SimulatedFleet
from hardware.sim.variation import DieVariation, die_variation


def oracle_die_truth(config: FleetConfig, address: DieAddress) -> DieVariation:
    """ORACLE: the hidden variation of one die of the fleet ``config``."""
    return die_variation(config.seed, address, config.geometry, config.variation, config.faults)


def oracle_fleet(driver: SimulatedDriver) -> SimulatedFleet:
    """ORACLE: the fleet behind a simulated driver (private on the driver)."""
    fleet: SimulatedFleet = getattr(driver, "_SimulatedDriver__fleet")  # noqa: B009  ORACLE
    return fleet


def oracle_fleet_config(driver: SimulatedDriver) -> FleetConfig:
    """ORACLE: the seed, geometry, variation and fault knobs of the fleet behind ``driver``."""
    return oracle_fleet(driver).config


def oracle_fleet_die(fleet: SimulatedFleet, address: DieAddress) -> DieVariation:
    """ORACLE: the hidden variation of one die as ``fleet`` hands it out (through its cache)."""
    return fleet._hidden_die(address)


def oracle_driver_truth(driver: SimulatedDriver, address: DieAddress) -> DieVariation:
    """ORACLE: the hidden variation of the die at ``address`` on the fleet behind ``driver``."""
    return oracle_die_truth(oracle_fleet_config(driver), address)

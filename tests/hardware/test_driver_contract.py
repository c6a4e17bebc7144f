"""The driver contract: every registered driver must pass this suite.

A third party validates its own driver with one command (see docs/drivers.md)::

    CIMCAL_CONTRACT_DRIVER=mytester CIMCAL_CONTRACT_OPTIONS='{"resource": "GPIB0::5"}' \\
        CIMCAL_CONTRACT_DIE=LOT1-W01-X+000Y+000 pytest tests/hardware/test_driver_contract.py

The options go to that driver only (validated by its ``Options`` model). Without
``CIMCAL_CONTRACT_DRIVER`` the suite runs against every driver the ``cimcal.drivers`` entry-point
group registers, each with its own default options. The checks are functions in
``tests/hardware/contract.py``; ``test_broken_drivers.py`` proves that each one fails on a driver
that breaks its rule.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from hardware.driver import DieAddress, Driver
from hardware.registry import create_driver
from tests.hardware.contract import CHECKS, targets

try:
    TARGETS = targets(os.environ)
except ValueError as e:
    raise pytest.UsageError(str(e)) from None
DIE = DieAddress.from_ecid(os.environ.get("CIMCAL_CONTRACT_DIE", "CONTRACT-W01-X+001Y-002"))


@pytest.fixture(params=TARGETS, ids=[name for name, _ in TARGETS])
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    """A fresh, unconnected driver under test, built by its entry-point name from its options."""
    name, options = request.param
    d = create_driver(name, options)
    try:
        yield d
    finally:
        d.close()


@pytest.mark.parametrize("check", list(CHECKS))
def test_contract(driver: Driver, check: str) -> None:
    CHECKS[check](driver, DIE)

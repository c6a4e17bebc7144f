"""The contract suite catches broken drivers: each fails exactly the checks guarding its defect."""

from __future__ import annotations

import pytest

from hardware.driver import DieAddress
from hardware.sim.driver import SimulatedDriver
from tests.hardware.broken_drivers import BROKEN
from tests.hardware.contract import CHECKS, failed_checks

DIE = DieAddress("BROKEN", 1, 2, -3)


def test_every_broken_driver_names_checks_that_exist() -> None:
    for cls, expected in BROKEN.items():
        assert expected <= set(CHECKS), cls.__name__


@pytest.mark.parametrize("cls", list(BROKEN), ids=[c.__name__ for c in BROKEN])
def test_the_contract_fails_a_broken_driver(cls: type[SimulatedDriver]) -> None:
    failed = failed_checks(lambda: cls(noise_seed=5), DIE)
    assert set(failed) == BROKEN[cls], failed


@pytest.mark.parametrize(("corner", "scale"), [("typical", 5.5), ("aggressive", 1.0), ("skewed", 1.0)])
def test_the_contract_passes_the_healthy_simulator_at_the_worst_corner(corner: str, scale: float) -> None:
    """The tolerances hold at variation scale 5.5 and at the strongest named corners."""
    assert (
        failed_checks(lambda: SimulatedDriver(corner=corner, variation_scale=scale, noise_seed=5), DIE) == {}
    )

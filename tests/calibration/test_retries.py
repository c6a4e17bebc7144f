"""Transient driver errors retry the one call that failed, not the die (app.calibration.transient)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from app.calibration.baselines import uncalibrated_image
from app.calibration.characterize import CharacterizationConfig, characterize
from app.calibration.functional import functional_test
from hardware.chip import NetworkProgram, encode_image
from hardware.driver import ContactError, DieFault, HardwareTimeoutError
from hardware.sim.driver import SimulatedFleet
from tests.calibration.conftest import ADDRESS, SMALL, SMALL_BUDGET, fleet_config
from tests.calibration.flaky import FlakyDriver

Tiny = tuple[NetworkProgram, NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]]


def _driver(scale: float = 1.0, **kw: Any) -> FlakyDriver:
    drv = FlakyDriver(fleet=SimulatedFleet(fleet_config(scale)), noise_seed=0, **kw).connect()
    drv.probe(ADDRESS)
    return drv


def test_a_retried_characterization_measures_what_a_clean_one_does() -> None:
    clean_drv = _driver()
    clean = characterize(clean_drv, budget=SMALL_BUDGET, rng=3)
    drv = _driver(
        faults={
            ("read_macro", 2): "timeout",
            ("read_macro", 5): "contact",  # re-probe, write the pattern into every macro again, read again
            ("write_macros", 1): "timeout",
            ("write_macros", 2): "contact",
        }
    )
    probes = drv.counters.probes
    res = characterize(drv, budget=SMALL_BUDGET, rng=3)
    assert res.retries == 4 and clean.retries == 0
    assert res.signature.to_bytes() == clean.signature.to_bytes()
    assert res.summary()["retries"] == 4
    # The driver charges what completed: two re-probes and the pattern written again (one broadcast
    # into every macro) after the lost read; a failed call charges nothing, the lost write is simply
    # written again.
    assert drv.counters.probes - probes == 2
    t = drv.timing
    assert res.writes == clean.writes + SMALL.n_macros and res.write_calls == clean.write_calls + 1
    assert res.reads == clean.reads
    assert res.tester_s == pytest.approx(
        clean.tester_s + 2 * t.probe_s + t.write_macros_s(SMALL.n_macros, broadcast=True)
    )


def test_a_call_is_tried_three_times_then_the_die_fails() -> None:
    drv = _driver(from_call={"read_macro": 5})  # the contact is gone for good
    with pytest.raises(ContactError):
        characterize(drv, budget=SMALL_BUDGET, rng=0)
    assert drv.calls["read_macro"] == 5 + 2
    assert drv.counters.probes == 1 + 2  # the first probe and one re-probe per retry


def test_three_timeouts_in_a_row_fail_and_attempts_one_retries_nothing() -> None:
    drv = _driver(faults={("read_macro", n): "timeout" for n in (3, 4, 5)})
    with pytest.raises(HardwareTimeoutError):
        characterize(drv, budget=SMALL_BUDGET, rng=0)
    once = _driver(faults={("read_macro", 3): "timeout"})
    with pytest.raises(HardwareTimeoutError):
        characterize(once, budget=SMALL_BUDGET, rng=0, config=CharacterizationConfig(attempts=1))


def test_a_die_fault_is_not_retried() -> None:
    drv = _driver(faults={("read_macro", 3): "die"})
    with pytest.raises(DieFault):
        characterize(drv, budget=SMALL_BUDGET, rng=0)
    assert drv.calls["read_macro"] == 3


def test_injected_timeouts_at_five_percent_per_call_no_longer_fail_the_die() -> None:
    drv = FlakyDriver(fleet=SimulatedFleet(fleet_config(1.0, p_timeout=0.05)), noise_seed=0).connect()
    drv.probe(ADDRESS)
    results = [characterize(drv, budget=SMALL_BUDGET, rng=k) for k in range(5)]
    assert sum(r.retries for r in results) > 0
    with pytest.raises(HardwareTimeoutError):  # without retries a timeout ends a characterization
        for k in range(20):
            characterize(drv, budget=SMALL_BUDGET, rng=k, config=CharacterizationConfig(attempts=1))


def test_functional_test_retries_program_and_run_and_reprograms_after_a_lost_contact(tiny: Tiny) -> None:
    program, _, test, labels = tiny
    image = encode_image(uncalibrated_image(program, SMALL))
    clean = functional_test(_driver(), image, test, labels, batch=40)
    drv = _driver(faults={("program_image", 1): "timeout", ("run_network", 2): "contact"})
    res = functional_test(drv, image, test, labels, batch=40)
    assert res.retries == 2 and clean.retries == 0
    np.testing.assert_array_equal(res.predictions, clean.predictions)
    assert drv.counters.image_programs == 2  # programmed again after the re-probe
    gone = _driver(from_call={"run_network": 1})
    with pytest.raises(ContactError):
        functional_test(gone, image, test, labels, batch=40)

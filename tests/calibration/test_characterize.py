"""Characterization against the simulator's hidden truth (oracle used for checking only)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from app.calibration.characterize import CharacterizationConfig, characterize
from hardware.driver import ContactError, HardwareTimeoutError
from hardware.sim.driver import SimulatedDriver
from hardware.sim.oracle import oracle_die_truth
from tests.calibration.conftest import ADDRESS, SMALL, SMALL_BUDGET

Make = Callable[..., SimulatedDriver]


def test_estimates_match_the_truth(make_driver: Make) -> None:
    drv = make_driver(1.5, dead_col_rate=0.03, stuck_cell_rate=2e-3)
    res = characterize(drv, budget=4 * SMALL_BUDGET, rng=0)
    sig, truth = res.signature, oracle_die_truth(drv.fleet.config, ADDRESS)
    live = ~truth.dead_cols
    assert truth.dead_cols.sum() > 0 and truth.stuck_mask.sum() > 0
    # Dead bit lines: found exactly, with their code.
    np.testing.assert_array_equal(sig.dead_cols, truth.dead_cols)
    np.testing.assert_array_equal(sig.dead_code[truth.dead_cols], truth.dead_code[truth.dead_cols])
    # Gain (with the column's mean cell error, which is part of it) and offset: far inside their spread.
    true_gain = truth.gain_ratio * (1.0 + truth.cell_error.mean(axis=1))
    gain_err = sig.gain[live] - true_gain[live]
    off_err = sig.offset_mac[live] - truth.offset_mac[live]
    assert np.abs(gain_err).max() < 0.06 and gain_err.std() < 0.35 * true_gain[live].std()
    assert np.abs(off_err).max() < 0.4 and off_err.std() < 0.1 * truth.offset_mac[live].std()
    assert sig.noise_sigma_mac == pytest.approx(np.full(SMALL.n_macros, 1.0), rel=0.1)  # not scaled
    assert sig.cell_sigma == pytest.approx(0.06 * 1.5, rel=0.25)
    # Stuck cells on live bit lines: found, with their value, and no false alarms.
    m, r, p = np.nonzero(truth.stuck_mask & live[:, None, :])
    found = set(zip(sig.stuck.macro.tolist(), sig.stuck.row.tolist(), sig.stuck.col.tolist(), strict=True))
    expected = set(zip(m.tolist(), r.tolist(), p.tolist(), strict=True))
    assert found == expected
    values = dict(
        zip(
            zip(sig.stuck.macro.tolist(), sig.stuck.row.tolist(), sig.stuck.col.tolist(), strict=True),
            sig.stuck.value.tolist(),
            strict=True,
        )
    )
    assert all(values[(a, b, c)] == truth.stuck_value[a, b, c] for a, b, c in expected)


def test_per_cell_errors_are_resolved_with_enough_reads(make_driver: Make) -> None:
    drv = make_driver(1.0)
    res = characterize(drv, budget=16 * SMALL_BUDGET, rng=1)
    truth = oracle_die_truth(drv.fleet.config, ADDRESS)
    sig = res.signature
    assert sig.cell_error is not None and sig.cell_residual_sigma < 0.7 * sig.cell_sigma
    live = ~truth.dead_cols
    est = sig.cell_error.transpose(0, 2, 1)[live]
    true = (truth.cell_error - truth.cell_error.mean(axis=1, keepdims=True)).transpose(0, 2, 1)[live]
    assert np.corrcoef(est.ravel(), true.ravel())[0, 1] > 0.7
    # A small budget cannot resolve cells: the signature says so instead of storing noise.
    lean = characterize(drv, budget=SMALL_BUDGET // 4, rng=1).signature
    assert lean.cell_error is None and lean.cell_residual_sigma == lean.cell_sigma
    assert lean.nbytes < sig.nbytes


def test_accounting_matches_the_driver(make_driver: Make) -> None:
    drv = make_driver(1.0)
    drv.reset_counters()
    res = characterize(drv, budget=SMALL_BUDGET, rng=2)
    t = drv.timing
    n = SMALL_BUDGET // (2 * SMALL.n_macros)
    assert res.read_vectors == SMALL_BUDGET == drv.counters.read_vectors
    assert res.reads == 2 * SMALL.n_macros == drv.counters.read_calls
    assert res.writes == 2 * SMALL.n_macros == drv.counters.macro_writes
    expected_s = res.writes * t.write_macro_s + res.reads * t.read_call_s + res.read_vectors * t.read_vector_s
    assert res.tester_s == pytest.approx(expected_s) == pytest.approx(drv.tester_time_s)
    assert res.signature.meta["vectors_per_pattern"] == n
    summary = res.summary()
    assert summary["read_vectors"] == SMALL_BUDGET and summary["bytes"] == res.signature.nbytes
    assert {"gain_spread", "offset_spread_mac", "n_dead_cols", "n_stuck_cells"} <= set(summary)


def test_same_seed_same_signature(make_driver: Make) -> None:
    a = characterize(make_driver(1.0, noise_seed=5), budget=SMALL_BUDGET, rng=9).signature
    b = characterize(make_driver(1.0, noise_seed=5), budget=SMALL_BUDGET, rng=9).signature
    assert a.to_bytes() == b.to_bytes()


@pytest.mark.parametrize("error", [HardwareTimeoutError, ContactError])
def test_transient_errors_that_persist_propagate_and_nothing_is_returned(
    make_driver: Make, error: type[Exception]
) -> None:
    """A call is tried three times (see test_retries.py); an error that persists ends the die."""
    drv = make_driver(1.0)
    calls = {"n": 0}
    original = drv._read_macro

    def flaky(macro: int, inputs: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] >= 5:
            raise error("read_macro", 1.0) if error is HardwareTimeoutError else error("contact lost")
        return original(macro, inputs)

    drv._read_macro = flaky  # type: ignore[method-assign]
    result = None
    with pytest.raises(error):
        result = characterize(drv, budget=SMALL_BUDGET, rng=0)
    assert result is None and calls["n"] == 5 + 2


def test_budget_too_small_is_refused(make_driver: Make) -> None:
    with pytest.raises(ValueError, match="budget"):
        characterize(make_driver(1.0), budget=10, rng=0)


def test_adc_edges_are_estimated_on_request(make_driver: Make) -> None:
    drv = make_driver(1.0)  # edge spread 0.15 LSB against read noise 1 MAC
    res = characterize(drv, budget=8 * SMALL_BUDGET, rng=3, config=CharacterizationConfig(edges=True))
    truth = oracle_die_truth(drv.fleet.config, ADDRESS)
    sig = res.signature
    assert sig.edge_offset_lsb is not None
    live = ~truth.dead_cols
    mid = slice(SMALL.adc_levels // 2 - 6, SMALL.adc_levels // 2 + 6)  # the edges the design visits most
    est, true = sig.edge_offset_lsb[live][:, mid].ravel(), truth.edge_offset_lsb[live][:, mid].ravel()
    assert np.corrcoef(est, true)[0, 1] > 0.5
    assert np.abs(est - true).mean() < np.abs(true).mean()
    assert characterize(drv, budget=SMALL_BUDGET, rng=3).signature.edge_offset_lsb is None

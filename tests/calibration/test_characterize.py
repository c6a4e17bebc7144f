"""Characterization against the simulator's hidden truth (oracle used for checking only)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from app.calibration.characterize import CharacterizationConfig, characterize
from hardware.driver import ContactError, HardwareTimeoutError
from hardware.sim.driver import SimulatedDriver
from hardware.sim.oracle import oracle_die_truth, oracle_fleet_config
from tests.calibration.conftest import ADDRESS, SMALL, SMALL_BUDGET

Make = Callable[..., SimulatedDriver]


def test_estimates_match_the_truth(make_driver: Make) -> None:
    drv = make_driver(1.5, dead_col_rate=0.03, stuck_cell_rate=2e-3)
    res = characterize(drv, budget=4 * SMALL_BUDGET, rng=0)
    sig, truth = res.signature, oracle_die_truth(oracle_fleet_config(drv), ADDRESS)
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
    truth = oracle_die_truth(oracle_fleet_config(drv), ADDRESS)
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
    """The short pass reads exactly the budget; each pattern is one broadcast write into every macro."""
    drv = make_driver(1.0)
    drv.reset_counters()
    res = characterize(drv, budget=SMALL_BUDGET, rng=2, config=CharacterizationConfig(reread_stuck=False))
    t = drv.timing
    n = SMALL_BUDGET // (2 * SMALL.n_macros)
    assert res.read_vectors == SMALL_BUDGET == drv.counters.read_vectors
    assert res.reads == 2 * SMALL.n_macros == drv.counters.read_calls
    assert res.writes == 2 * SMALL.n_macros == drv.counters.macro_writes
    assert res.write_calls == 2 == drv.counters.write_calls
    write_s = t.write_macros_s(SMALL.n_macros, broadcast=True)
    expected_s = 2 * write_s + res.reads * t.read_call_s + res.read_vectors * t.read_vector_s
    assert res.tester_s == pytest.approx(expected_s) == pytest.approx(drv.tester_time_s)
    assert res.signature.meta["vectors_per_pattern"] == n
    summary = res.summary()
    assert summary["read_vectors"] == SMALL_BUDGET and summary["bytes"] == res.signature.nbytes
    assert {"gain_spread", "offset_spread_mac", "n_dead_cols", "n_stuck_cells"} <= set(summary)


def test_one_macro_at_a_time_costs_a_write_per_macro_and_measures_the_same(make_driver: Make) -> None:
    per_macro = CharacterizationConfig(broadcast=False, reread_stuck=False)
    broadcast = CharacterizationConfig(reread_stuck=False)
    a = characterize(make_driver(1.0, noise_seed=4), budget=SMALL_BUDGET, config=per_macro)
    b = characterize(make_driver(1.0, noise_seed=4), budget=SMALL_BUDGET, config=broadcast)
    assert a.writes == a.write_calls == 2 * SMALL.n_macros and b.write_calls == 2
    t = make_driver(1.0).timing
    saved = 2 * (SMALL.n_macros * t.write_macro_s - t.write_macros_s(SMALL.n_macros, broadcast=True))
    assert a.tester_s - b.tester_s == pytest.approx(saved)
    # The same reads in another order (the noise draws differ): the same die, measured alike.
    assert np.abs(a.signature.gain - b.signature.gain).max() < 0.05
    np.testing.assert_array_equal(a.signature.dead_cols, b.signature.dead_cols)


def test_rereads_of_the_suspects_complete_the_stuck_map_at_a_small_cost(make_driver: Make) -> None:
    """A short pass that misses stuck cells on its own finds nearly all with targeted re-reads (ORACLE
    for checking), with no false alarm and the right values, for a few more read vectors and a write."""
    n_true = n_short = n_reread = fp = 0
    extra_vectors = extra_s = 0.0
    for seed in range(3):
        # A noisy circuit (1.5 MAC of read noise, where the short pass misses stuck cells on its own).
        drv = make_driver(1.5, stuck_cell_rate=4e-3, noise_seed=seed, read_noise_sigma_mac=1.5)
        truth = oracle_die_truth(oracle_fleet_config(drv), ADDRESS)
        true = truth.stuck_mask & ~truth.dead_cols[:, None, :]
        short = characterize(drv, budget=SMALL_BUDGET // 2, config=CharacterizationConfig(reread_stuck=False))
        # 20 times the default stuck rate: the re-reads may take as many vectors as the short pass.
        full = characterize(drv, budget=SMALL_BUDGET // 2, config=CharacterizationConfig(reread_fraction=1.0))
        capped = characterize(drv, budget=SMALL_BUDGET // 2)
        assert capped.read_vectors <= 1.25 * SMALL_BUDGET // 2 < full.read_vectors
        for res, count in ((short, "short"), (full, "reread")):
            found = np.zeros_like(true)
            sig = res.signature
            found[sig.stuck.macro, sig.stuck.row, sig.stuck.col] = True
            hits = int((found & true).sum())
            if count == "short":
                n_short += hits
            else:
                n_reread += hits
                fp += int((found & ~true).sum())
                ok = sig.stuck.value == truth.stuck_value[sig.stuck.macro, sig.stuck.row, sig.stuck.col]
                assert ok[true[sig.stuck.macro, sig.stuck.row, sig.stuck.col]].all()
        n_true += int(true.sum())
        extra_vectors += full.read_vectors - short.read_vectors
        extra_s += full.tester_s - short.tester_s
        assert full.signature.meta["stuck"]["method"] == "reread"
    assert n_true > 60 and fp == 0
    assert n_reread >= 0.9 * n_true and n_reread >= n_short + 0.1 * n_true
    assert extra_vectors / 3 <= SMALL_BUDGET // 2
    assert extra_s / 3 < 0.01


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
    truth = oracle_die_truth(oracle_fleet_config(drv), ADDRESS)
    sig = res.signature
    assert sig.edge_offset_lsb is not None
    live = ~truth.dead_cols
    mid = slice(SMALL.adc_levels // 2 - 6, SMALL.adc_levels // 2 + 6)  # the edges the design visits most
    est, true = sig.edge_offset_lsb[live][:, mid].ravel(), truth.edge_offset_lsb[live][:, mid].ravel()
    assert np.corrcoef(est, true)[0, 1] > 0.5
    assert np.abs(est - true).mean() < np.abs(true).mean()
    assert characterize(drv, budget=SMALL_BUDGET, rng=3).signature.edge_offset_lsb is None


def test_reads_split_into_small_calls_measure_the_same_signature(make_driver: Make) -> None:
    """Short pass and re-reads both honour max_vectors_per_call; the die's noise stream is the same."""
    whole = characterize(make_driver(1.5, stuck_cell_rate=4e-3, noise_seed=2), budget=SMALL_BUDGET)
    split = characterize(
        make_driver(1.5, stuck_cell_rate=4e-3, noise_seed=2),
        budget=SMALL_BUDGET,
        config=CharacterizationConfig(max_vectors_per_call=16),
    )
    assert whole.signature.meta["stuck"]["method"] == "reread" and whole.signature.n_stuck_cells > 0
    assert split.signature.to_bytes() == whole.signature.to_bytes()
    assert split.read_vectors == whole.read_vectors and split.reads > whole.reads


@pytest.mark.parametrize("rate", [2e-3, 1e-2])
def test_the_stuck_prior_is_measured_on_the_die_not_assumed(make_driver: Make, rate: float) -> None:
    """The MAP test's prior follows the die's own stuck rate (no number copied from the simulator)."""
    drv = make_driver(1.0, stuck_cell_rate=rate)
    sig = characterize(drv, budget=4 * SMALL_BUDGET, rng=0).signature
    truth = oracle_die_truth(oracle_fleet_config(drv), ADDRESS)
    true_rate = (truth.stuck_mask & ~truth.dead_cols[:, None, :]).mean()
    assert sig.meta["stuck"]["prior_source"] == "measured"
    assert sig.meta["stuck"]["prior"] == pytest.approx(true_rate, rel=0.3)
    fixed = characterize(
        make_driver(1.0, stuck_cell_rate=rate), budget=4 * SMALL_BUDGET, rng=0,
        config=CharacterizationConfig(stuck_prior=2e-4),
    ).signature
    assert fixed.meta["stuck"] == {**fixed.meta["stuck"], "prior": 2e-4, "prior_source": "configured"}


def test_the_edge_prior_follows_the_dies_edge_spread(make_driver: Make) -> None:
    """The spread that shrinks the ADC edges is the die's own: wider on a die whose edges spread more."""
    spread = {}
    for scale in (1.0, 3.0):
        drv = make_driver(scale)
        sig = characterize(drv, budget=4 * SMALL_BUDGET, rng=0, config=CharacterizationConfig(edges=True)).signature
        truth = oracle_die_truth(oracle_fleet_config(drv), ADDRESS)
        spread[scale] = sig.meta["edge_prior_sigma_lsb"]
        assert spread[scale] == pytest.approx(float(truth.edge_offset_lsb[~truth.dead_cols].std()), rel=0.35)
    assert spread[3.0] > 1.5 * spread[1.0]

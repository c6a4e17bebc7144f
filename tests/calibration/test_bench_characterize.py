"""bench.characterize: the figures the `cimcal bench` aggregator reads, on real simulated dies."""

from __future__ import annotations

from bench.characterize import PREVIOUS, PRODUCTION, measure


def test_measure_reports_host_ms_tester_seconds_and_stuck_maps_per_setting() -> None:
    out = measure(dies=1, seed=3, scale=1.0, before=True)
    prod, prev = out["settings"]
    assert prod["setting"] == PRODUCTION.name and prev["setting"] == PREVIOUS.name
    assert out["estimate_ms_median"] == prod["estimate_ms_median"] > 0
    assert out["tester_s_per_die"] == prod["tester_s_per_die"]
    # Broadcast writes and the short pass: under 0.1 tester-s per die, against 0.262 s before.
    assert prod["tester_s_per_die"] < 0.1 < 0.25 < prev["tester_s_per_die"]
    assert prod["write_calls_per_die"] <= 3 and prev["write_calls_per_die"] == 64
    assert 16_384 <= prod["read_vectors_per_die"] <= 1.25 * 16_384 and prev["read_vectors_per_die"] == 131_072
    # At the documented read noise the short pass with re-reads finds the stuck cells (ORACLE).
    assert prod["stuck_true"] > 50 and prod["stuck_recall"] >= 0.95 and prod["stuck_false_positives"] == 0

"""Read throughput of one simulated 256 x 64 macro and memory per cached die.

python -m bench.hal [--vectors 20000] [--repeats 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from hardware.driver import DieAddress
from hardware.sim.driver import SimulatedDriver, SimulatedFleet
from hardware.sim.oracle import oracle_fleet_die


def run_hal_bench(
    vectors: int = 20_000, repeats: int = 5, batch_sizes: tuple[int, ...] = (1, 64, 1024, 20_000)
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    d = SimulatedDriver(noise_seed=0)
    d.connect()
    d.probe(DieAddress("BENCH", 1, 0, 0))
    g = d.geometry()
    d.write_macro(0, rng.choice(np.array([-1, 1], dtype=np.int8), size=(g.rows, g.phys_cols)))
    results: dict[str, Any] = {"macro": f"{g.rows} x {g.cols} (+{g.spare_cols} spares)", "throughput": []}
    for batch in batch_sizes:
        x = (rng.random((batch, g.rows)) < 0.5).astype(np.uint8)
        n_calls = max(1, vectors // batch)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(n_calls):
                d.read_macro(0, x)
            best = min(best, time.perf_counter() - t0)
        results["throughput"].append({"batch": batch, "vectors_per_s": n_calls * batch / best})

    # Memory of one cached die: the hidden variation (oracle-side) plus the written macro arrays.
    tracemalloc.start()
    fleet = SimulatedFleet(cache_dies=1)
    d2 = SimulatedDriver(fleet=fleet)
    d2.connect()
    d2.probe(DieAddress("BENCH", 1, 1, 0))
    for m in range(g.n_macros):
        d2.write_macro(m, np.ones((g.rows, g.phys_cols), dtype=np.int8))
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    truth = oracle_fleet_die(fleet, DieAddress("BENCH", 1, 1, 0))  # ORACLE: its size only
    results["die_variation_mib"] = truth.nbytes / 2**20
    results["die_with_all_macros_written_mib"] = current / 2**20
    results["peak_mib"] = peak / 2**20
    t0 = time.perf_counter()
    for x_ in range(5):
        oracle_fleet_die(SimulatedFleet(cache_dies=0), DieAddress("BENCH", 2, x_, 0))
    results["die_generation_ms"] = (time.perf_counter() - t0) / 5 * 1e3
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--vectors", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    r = run_hal_bench(a.vectors, a.repeats)
    print(f"simulated macro {r['macro']}: read throughput")
    for t in r["throughput"]:
        print(f"  batch {t['batch']:>6}: {t['vectors_per_s']:>12,.0f} vectors/s")
    print(f"die variation (hidden truth): {r['die_variation_mib']:.2f} MiB per cached die")
    print(
        f"die with all {32} macros written: {r['die_with_all_macros_written_mib']:.2f} MiB (peak {r['peak_mib']:.2f})"
    )
    print(f"die variation generation: {r['die_generation_ms']:.1f} ms")
    if a.json:
        a.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()

"""Encoding time and size of the lot exports (STDF, CSV, Parquet, E142) on a synthetic lot.

    python -m bench.exports [--wafers 25] [--dies-per-wafer 561] [--repeats 3] [--seed 0] [--json PATH]

Builds the plain records the writers take (:mod:`app.exports.records`) for a lot of ``wafers``
round wafers of ``dies-per-wafer`` sites each (the demo's circular maps), every die characterized and
tested before and after calibration, with values drawn from ``numpy.random.default_rng(seed)``, and
times the pure writers (best of ``repeats``): what the export endpoints spend on encoding. Reading
the rows from the database is not part of it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from app.demo import wafer_sites
from app.exports.e142 import write_e142
from app.exports.records import BinInfo, DieRow, LotResult, PartResult, WaferBinMap, WaferResult
from app.exports.stdf import iter_records, write_stdf
from app.exports.tables import parquet_available, write_csv, write_parquet
from app.services.reporting.bins import bin_info
from app.services.reporting.exports import (
    TEST_ACC_AFTER,
    TEST_ACC_BEFORE,
    TEST_CHAR_READS,
    TEST_CHAR_TIME,
    TEST_DEAD_COLS,
    TEST_OFFSET_SPREAD,
    TEST_STUCK_CELLS,
)

TESTS = (
    TEST_OFFSET_SPREAD,
    TEST_DEAD_COLS,
    TEST_STUCK_CELLS,
    TEST_CHAR_TIME,
    TEST_CHAR_READS,
    TEST_ACC_BEFORE,
    TEST_ACC_AFTER,
)
T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
LOT = "BENCHX1"


def synthetic_lot(wafers: int, dies_per_wafer: int, seed: int) -> tuple[LotResult, list[DieRow], WaferBinMap]:
    """A lot, its per-die rows and the first wafer's bin map, all from one seeded generator."""
    rng = np.random.default_rng(seed)
    sites, _ = wafer_sites(dies_per_wafer)
    soft_bins = np.array([1, 1, 1, 2, 3, 4, 10, 11])
    wafer_results: list[WaferResult] = []
    rows: list[DieRow] = []
    first_map: dict[tuple[int, int], int | None] = {}
    for w in range(1, wafers + 1):
        parts = []
        for i, (x, y) in enumerate(sites):
            soft = int(rng.choice(soft_bins))
            info = bin_info(soft)
            before, after = float(rng.uniform(10, 60)), float(rng.uniform(60, 90))
            spread, dead, stuck = float(rng.normal(0.9, 0.1)), int(rng.poisson(0.5)), int(rng.poisson(110))
            ecid = f"{LOT}-W{w:02d}-X{x:+04d}Y{y:+04d}"
            hard = 1 if info.passed else 2
            parts.append(
                PartResult(
                    ecid=ecid,
                    x=x,
                    y=y,
                    hard_bin=hard,
                    soft_bin=soft,
                    passed=info.passed,
                    test_time_ms=330,
                    results=(
                        (TEST_OFFSET_SPREAD.number, spread),
                        (TEST_DEAD_COLS.number, float(dead)),
                        (TEST_STUCK_CELLS.number, float(stuck)),
                        (TEST_CHAR_TIME.number, 0.262),
                        (TEST_CHAR_READS.number, 64.0),
                        (TEST_ACC_BEFORE.number, before),
                        (TEST_ACC_AFTER.number, after),
                    ),
                    site=1 + i % 2,
                )
            )
            at = T0 + timedelta(seconds=w * 3600 + i)
            rows.append(
                DieRow(
                    LOT, w, x, y, ecid, "kws-bnn@1", soft, hard, info.passed, before / 100, after / 100,
                    0.07, at, 1 + i % 2, 1, 64, 0, 0.262, dead, stuck, spread, at,
                )
            )
            if w == 1:
                first_map[(x, y)] = soft
        start = T0 + timedelta(hours=w)
        wafer_results.append(WaferResult(w, f"{LOT}-W{w:02d}", start, start + timedelta(minutes=30), tuple(parts)))
    used = sorted({int(b) for b in soft_bins})
    lot = LotResult(
        lot_id=LOT,
        product="CIM-BENCH",
        setup_at=T0,
        started_at=T0,
        finished_at=T0 + timedelta(hours=wafers + 1),
        tests=TESTS,
        wafers=tuple(wafer_results),
        soft_bins={b: bin_info(b) for b in used},
        hard_bins={1: BinInfo(1, "pass", True), 2: BinInfo(2, "fail", False)},
    )
    bin_map = WaferBinMap(LOT, 1, f"{LOT}-W01", first_map, {b: bin_info(b) for b in used}, "CIM-BENCH", "kws-bnn@1")
    return lot, rows, bin_map


def _best(fn: Callable[[], bytes], repeats: int) -> tuple[float, int]:
    best, size = float("inf"), 0
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        size = len(fn())
        best = min(best, time.perf_counter() - t0)
    return best, size


def run(wafers: int, dies_per_wafer: int, repeats: int, seed: int) -> dict[str, Any]:
    lot, rows, bin_map = synthetic_lot(wafers, dies_per_wafer, seed)
    n_records = sum(1 for _ in iter_records(lot))
    out: dict[str, Any] = {"dies": len(rows), "stdf_records": n_records, "seed": seed, "repeats": repeats}
    writers: dict[str, Callable[[], bytes]] = {
        "stdf": lambda: write_stdf(lot),
        "csv": lambda: write_csv(rows),
        "e142_one_wafer": lambda: write_e142(bin_map),
    }
    if parquet_available():
        writers["parquet"] = lambda: write_parquet(rows)
    for name, fn in writers.items():
        s, size = _best(fn, repeats)
        out[name] = {"s": s, "bytes": size}
    out["stdf"]["us_per_record"] = out["stdf"]["s"] / n_records * 1e6
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.exports", description=__doc__.splitlines()[0])
    p.add_argument("--wafers", type=int, default=25)
    p.add_argument("--dies-per-wafer", type=int, default=561)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    res = run(a.wafers, a.dies_per_wafer, a.repeats, a.seed)
    text = json.dumps(res, indent=1)
    if a.json:
        a.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

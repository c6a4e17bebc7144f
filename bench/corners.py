"""Process-corner benchmark: accuracy per named corner of the simulated fleet, and what its
non-linear terms cost.

For every corner of :data:`hardware.sim.corners.CORNERS` and ``dies`` dies (the quality benchmark's
die addresses and read-noise seeds), each die is measured with:

* uncalibrated : the ideal image programmed as is (1 copy);
* cimcal       : characterization (default budget) + compensation (production setting);
* ORACLE       : cimcal's compensation fed the die's hidden linear truth (gain, offset, cells, edges);
* linear twin  : the same die with its non-linear terms switched off (no bit-line saturation, no
                 IR drop, no INL bow; every other parameter identical, as those terms draw from their
                 own seed stream): ORACLE and cimcal on it. ``ORACLE - ORACLE(twin)`` is what the
                 non-linear terms cost a compensation that knows the die's linear truth exactly, so it
                 bounds what estimating and compensating them could win.

Run: ``python -m bench.corners --dies 4 --model kws-bnn@1`` (seed: the quality benchmark's fleet
seed 2022; die d of corner i is ``bench.quality_dies.die_address(i, d)``, read-noise seed 1000 + d).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from app.calibration.baselines import uncalibrated_image
from app.calibration.characterize import characterize
from app.calibration.pipeline import ModelContext, compensate
from bench.oracle import oracle_signature
from bench.quality_data import DEFAULT_MODEL, MODELS, BenchData, load_bench_data
from bench.quality_dies import _STATE, FLEET_SEED, DriverSpec, _accuracy, die_address, worker_pool
from hardware.chip import ChipGeometry, encode_image, execute_network, ideal_readout
from hardware.driver import Driver
from hardware.sim.corners import CORNERS, corner_variation
from hardware.sim.driver import FleetConfig, SimulatedDriver, SimulatedFleet
from hardware.sim.variation import VariationConfig


def linear_twin(variation: VariationConfig) -> VariationConfig:
    """``variation`` without bit-line saturation, IR drop and INL bow (all else identical)."""
    return replace(
        variation, bl_sat_mac=0.0, ir_drop=0.0, ir_drop_sigma=0.0, adc_inl_lsb=0.0, adc_inl_sigma_lsb=0.0
    )


def _driver(config: FleetConfig, die: int) -> Driver:
    return SimulatedDriver(
        fleet=SimulatedFleet(config), noise_seed=1000 + die, default_timeout_s=3600.0
    ).connect()


def corner_task(corner_index: int, corner: str, die: int) -> dict[str, Any]:
    data: BenchData = _STATE["data"]
    ctx: ModelContext = _STATE["ctx"]
    addr = die_address(corner_index, die)
    rec: dict[str, Any] = {"corner": corner, "die": die, "ecid": addr.ecid}
    variation = corner_variation(corner)
    for label, var in (("", variation), ("twin_", linear_twin(variation))):
        config = FleetConfig(seed=FLEET_SEED, variation=var)
        drv = _driver(config, die)
        drv.probe(addr)
        g = drv.geometry()
        if not label:
            rec["uncalibrated"], _ = _accuracy(drv, encode_image(uncalibrated_image(data.program, g)))
        t0 = time.perf_counter()
        char = characterize(drv, rng=np.random.default_rng([FLEET_SEED, corner_index, die]))
        rec[f"{label}characterize_wall_s"] = time.perf_counter() - t0
        rec[f"{label}characterize_tester_s"] = char.tester_s
        comp = compensate(ctx, char.signature, addr.ecid)
        rec[f"{label}cimcal"], _ = _accuracy(drv, comp.image_bytes)
        orc = compensate(ctx, oracle_signature(config, addr), addr.ecid)  # ORACLE
        rec[f"{label}oracle"], _ = _accuracy(drv, orc.image_bytes)
    return rec


METHODS = ("uncalibrated", "cimcal", "oracle", "twin_cimcal", "twin_oracle")


def run_corners(
    dies: int = 4,
    corners: Sequence[str] | None = None,
    *,
    model: str = DEFAULT_MODEL,
    test_clips: int | None = None,
    workers: int = 2,
    log: Any = print,
) -> dict[str, Any]:
    names = list(corners or CORNERS)
    m = MODELS[model]
    data, _ = load_bench_data(
        test_clips if test_clips is not None else m.test_clips, m.calib_clips, m.tune_clips, 0, None, model
    )
    g = ChipGeometry()
    ideal_img = uncalibrated_image(data.program, g)
    logits = execute_network(ideal_img, data.test_x, ideal_readout(ideal_img.macros, g))
    ideal = float(np.mean(logits.argmax(axis=1) == data.test_y))
    t0 = time.perf_counter()
    with worker_pool(data, workers, DriverSpec()) as pool:
        futs = [pool.submit(corner_task, list(CORNERS).index(c), c, d) for c in names for d in range(dies)]
        recs = [f.result() for f in futs]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for c in names:
        rs = [r for r in recs if r["corner"] == c]
        table[c] = {
            k: {"mean": float(np.mean([r[k] for r in rs])), "min": float(np.min([r[k] for r in rs]))}
            for k in METHODS
        }
        table[c]["characterize_tester_s"] = {
            "mean": float(np.mean([r["characterize_tester_s"] for r in rs])),
            "min": float(np.min([r["characterize_tester_s"] for r in rs])),
        }
    lines = [
        f"{data.model_name}: ideal chip {100 * ideal:.1f} %, {dies} dies per corner, mean / min",
        "",
        "| corner | uncalibrated | cimcal | ORACLE | ORACLE, linear twin | cimcal, linear twin |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c, row in table.items():
        cells = [
            f"{100 * row[k]['mean']:.1f} / {100 * row[k]['min']:.1f}"
            for k in ("uncalibrated", "cimcal", "oracle", "twin_oracle", "twin_cimcal")
        ]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    log("\n".join(lines))
    return {
        "model": data.model_name,
        "ideal": ideal,
        "dies": recs,
        "table": table,
        "markdown": "\n".join(lines),
        "wall_s": time.perf_counter() - t0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.corners", description=__doc__.split("\n\n")[0])
    p.add_argument("--dies", type=int, default=4)
    p.add_argument("--corners", nargs="*", default=None, choices=sorted(CORNERS))
    p.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS))
    p.add_argument("--test-clips", type=int, default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    out = run_corners(
        args.dies, args.corners, model=args.model, test_clips=args.test_clips, workers=args.workers
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

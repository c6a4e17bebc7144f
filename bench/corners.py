"""Process-corner benchmark: accuracy per named corner of the simulated fleet, and what its
non-linear terms cost.

For every corner of :data:`hardware.sim.corners.CORNERS` and ``dies`` dies (the quality benchmark's
die addresses and read-noise seeds), each die is measured with:

* uncalibrated : the ideal image programmed as is (1 copy);
* cimcal       : characterization (default budget) + compensation (production setting);
* ORACLE       : cimcal's compensation fed the die's hidden linear truth (gain, offset, cells, edges);
* ORACLE + NL  : the same with the die's true saturation levels and IR drop (signature fields
                 ``bl_sat_mac`` / ``ir_drop``, which compensation models when present);
* linear twin  : the same die with its non-linear terms switched off (no bit-line saturation, no
                 IR drop, no INL bow; every other parameter identical, as those terms draw from their
                 own seed stream): ORACLE and cimcal on it. ``ORACLE - ORACLE(twin)`` is what the
                 non-linear terms cost a compensation that knows the die's linear truth exactly, so it
                 bounds what estimating and compensating them could win.

``--terms CORNER`` instead measures cimcal on that corner's dies with one non-linear term at a time
(the others off): which term the cost above comes from; ``--terms CORNER --oracle-terms`` the ORACLE
with and without saturation and IR drop in its signature, on dies with some terms switched off.

Run: ``python -m bench.corners --dies 4 --model kws-bnn@1`` (seed: the quality benchmark's fleet
seed 2022; die d of corner i is ``bench.quality_dies.die_address(i, d)``, read-noise seed 1000 + d;
characterization seeded by ``[2022, i, d]``).
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
from hardware.sim.corners import CORNERS, corner_variation, linear_twin
from hardware.sim.driver import FleetConfig, SimulatedDriver, SimulatedFleet


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
        if not label:
            nl = compensate(ctx, oracle_signature(config, addr, nonlinear=True), addr.ecid)  # ORACLE
            rec["oracle_nonlinear"], _ = _accuracy(drv, nl.image_bytes)
    return rec


TERMS: dict[str, tuple[str, ...]] = {
    "IR drop only": ("ir_drop", "ir_drop_sigma"),
    "saturation only": ("bl_sat_mac", "bl_sat_sigma"),
    "INL bow only": ("adc_inl_lsb", "adc_inl_sigma_lsb"),
}
"""Which corner parameters each variant of the term ablation keeps (the rest is the linear twin)."""


def terms_task(corner_index: int, corner: str, die: int) -> dict[str, Any]:
    """cimcal on die ``die`` of ``corner`` with one non-linear term at a time (the others off)."""
    ctx: ModelContext = _STATE["ctx"]
    addr = die_address(corner_index, die)
    variation = corner_variation(corner)
    rec: dict[str, Any] = {"corner": corner, "die": die, "ecid": addr.ecid}
    for name, keep in TERMS.items():
        var = replace(linear_twin(variation), **{k: getattr(variation, k) for k in keep})
        drv = _driver(FleetConfig(seed=FLEET_SEED, variation=var), die)
        drv.probe(addr)
        char = characterize(drv, rng=np.random.default_rng([FLEET_SEED, corner_index, die]))
        rec[name], _ = _accuracy(drv, compensate(ctx, char.signature, addr.ecid).image_bytes)
    return rec


def oracle_terms_task(corner_index: int, corner: str, die: int) -> dict[str, Any]:
    """ORACLE with and without the saturation / IR-drop signature fields, on die ``die`` of ``corner``
    with some of its non-linear terms switched off (the rest of the die identical)."""
    ctx: ModelContext = _STATE["ctx"]
    addr = die_address(corner_index, die)
    variation = corner_variation(corner)
    twin = linear_twin(variation)
    variants = {
        "saturation only": replace(
            twin, bl_sat_mac=variation.bl_sat_mac, bl_sat_sigma=variation.bl_sat_sigma
        ),
        "IR drop only": replace(twin, ir_drop=variation.ir_drop, ir_drop_sigma=variation.ir_drop_sigma),
        "saturation + IR drop": replace(variation, adc_inl_lsb=0.0, adc_inl_sigma_lsb=0.0),
        "all three (with INL)": variation,
    }
    rec: dict[str, Any] = {"corner": corner, "die": die, "ecid": addr.ecid}
    for name, var in variants.items():
        config = FleetConfig(seed=FLEET_SEED, variation=var)
        drv = _driver(config, die)
        drv.probe(addr)
        for nl in (False, True):
            comp = compensate(ctx, oracle_signature(config, addr, nonlinear=nl), addr.ecid)  # ORACLE
            rec[f"{name} / {'modelled' if nl else 'linear'}"], _ = _accuracy(drv, comp.image_bytes)
    return rec


def run_terms(
    dies: int = 4,
    corner: str = "aggressive",
    *,
    model: str = DEFAULT_MODEL,
    workers: int = 2,
    oracle: bool = False,
    log: Any = print,
) -> dict[str, Any]:
    """cimcal's accuracy with each non-linear term of ``corner`` alone (same dies as :func:`run_corners`);
    with ``oracle``, the ORACLE with and without the terms in its signature instead."""
    m = MODELS[model]
    data, _ = load_bench_data(m.test_clips, m.calib_clips, m.tune_clips, 0, None, model)
    with worker_pool(data, workers, DriverSpec()) as pool:
        task = oracle_terms_task if oracle else terms_task
        futs = [pool.submit(task, list(CORNERS).index(corner), corner, d) for d in range(dies)]
        recs = [f.result() for f in futs]
    keys = [k for k in recs[0] if k not in ("corner", "die", "ecid")]
    table = {k: float(np.mean([r[k] for r in recs])) for k in keys}
    what = "ORACLE, linear vs modelled saturation + IR drop" if oracle else "cimcal with one term on"
    log(f"{data.model_name}, corner {corner}, {dies} dies, mean accuracy, {what}:")
    log("\n".join(f"  {k}: {100 * v:.1f} %" for k, v in table.items()))
    return {"model": data.model_name, "corner": corner, "dies": recs, "table": table}


METHODS = ("uncalibrated", "cimcal", "oracle", "oracle_nonlinear", "twin_cimcal", "twin_oracle")


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
        "| corner | uncalibrated | cimcal | ORACLE | ORACLE with saturation + IR drop "
        "| ORACLE, linear twin | cimcal, linear twin |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c, row in table.items():
        cells = [
            f"{100 * row[k]['mean']:.1f} / {100 * row[k]['min']:.1f}"
            for k in ("uncalibrated", "cimcal", "oracle", "oracle_nonlinear", "twin_oracle", "twin_cimcal")
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
    p.add_argument(
        "--terms",
        default=None,
        choices=sorted(CORNERS),
        help="instead: cimcal at this corner with one non-linear term at a time",
    )
    p.add_argument(
        "--oracle-terms",
        action="store_true",
        help="with --terms: the ORACLE with and without saturation / IR drop in its signature",
    )
    args = p.parse_args(argv)
    if args.terms:
        out = run_terms(
            args.dies, args.terms, model=args.model, workers=args.workers, oracle=args.oracle_terms
        )
    else:
        out = run_corners(
            args.dies, args.corners, model=args.model, test_clips=args.test_clips, workers=args.workers
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

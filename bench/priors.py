"""Characterization priors measured on the die against the former fixed priors, die by die.

The stuck-cell prior and the ADC-edge prior used to be fixed numbers equal to the simulator's own
defaults (2e-4 stuck cells per cell, 0.15 LSB edge spread); they are now estimated from each die's
reads (``CharacterizationConfig(stuck_prior=None, edge_prior_sigma_lsb=None)``). For each die this
characterizes twice from the same reads (same read-noise seed, same design seed), once with each
setting, and reports the stuck-cell map and the edges against the ORACLE truth, the prior each run
used, and the accuracy of the compensated image (production setting, and with ADC edges).

Run: ``python -m bench.priors --dies 4 --scales 1 3.5 5.5 --json docs/data/priors.json`` (fleet
seed 2022, design seed ``[2022, scale index, die]``, read-noise seed ``2022 * 1009 + die``; the data
subsets seed ``--seed 0``).

``--stuck-map`` instead counts the stuck cells of one die (production characterization, default
budget) against the ORACLE truth, at a raised stuck rate, per scale: ``python -m bench.priors
--stuck-map --scales 1 5.5 8 10`` (fleet seed 5, stuck rate 2e-3, die LOTF-W01-X+000Y+000, read-noise
seed 0, design seed 0: the figures of docs/calibration.md, "Degenerate dies"); ``--stuck-prior
2e-4`` runs it with the former fixed prior.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.calibration.characterize import CharacterizationConfig, characterize
from app.calibration.compensate import CompensationConfig
from app.calibration.functional import functional_test
from app.calibration.pipeline import compensate
from bench.quality_data import DEFAULT_MODEL, load_bench_data
from hardware.driver import DieAddress
from hardware.sim.driver import FleetConfig, SimulatedDriver, SimulatedFleet
from hardware.sim.oracle import oracle_driver_truth
from hardware.sim.variation import VariationConfig

FLEET_SEED = 2022
SETTINGS: dict[str, CharacterizationConfig] = {
    "fixed (former)": CharacterizationConfig(edges=True, stuck_prior=2e-4, edge_prior_sigma_lsb=0.15),
    "measured": CharacterizationConfig(edges=True),
}


def die_address(scale_index: int, die: int) -> DieAddress:
    ring = np.random.default_rng([FLEET_SEED, scale_index, die]).integers(-14, 15, size=2)
    return DieAddress(f"QB{scale_index:02d}", 1 + die // 50, int(ring[0]), int(ring[1]))


def run(dies: int, scales: list[float], test_clips: int, seed: int, model: str) -> list[dict[str, Any]]:
    data, ctx = load_bench_data(test_clips, None, 0, seed, model=model)
    rows: list[dict[str, Any]] = []
    for si, scale in enumerate(scales):
        for die in range(dies):
            addr = die_address(si, die)
            for name, cfg in SETTINGS.items():
                drv = SimulatedDriver(fleet_seed=FLEET_SEED, variation_scale=scale, noise_seed=FLEET_SEED * 1009 + die)
                drv.connect()
                drv.probe(addr)
                truth = oracle_driver_truth(drv, addr)  # ORACLE: for scoring only
                t0 = time.perf_counter()
                char = characterize(drv, rng=np.random.default_rng([FLEET_SEED, si, die]), config=cfg)
                sig = char.signature
                found = np.zeros_like(truth.stuck_mask)
                found[sig.stuck.macro, sig.stuck.row, sig.stuck.col] = True
                true = truth.stuck_mask & ~truth.dead_cols[:, None, :]
                live = ~sig.dead_cols
                assert sig.edge_offset_lsb is not None
                err = (sig.edge_offset_lsb - truth.edge_offset_lsb)[live]
                rec: dict[str, Any] = {
                    "scale": scale,
                    "die": die,
                    "setting": name,
                    "stuck_prior": sig.meta["stuck"]["prior"],
                    "edge_prior_sigma_lsb": sig.meta["edge_prior_sigma_lsb"],
                    "stuck_true": int(true.sum()),
                    "stuck_found": int(found.sum()),
                    "stuck_hits": int((found & true).sum()),
                    "edge_rmse_lsb": float(np.sqrt(np.mean(err**2))),
                    "characterize_compute_s": char.compute_s,
                }
                for label, comp_cfg in (("accuracy", CompensationConfig()), ("accuracy_edges", CompensationConfig(use_edges=True))):
                    comp = compensate(ctx, sig, addr.ecid, config=comp_cfg)
                    rec[label] = functional_test(drv, comp.image_bytes, data.test_x, data.test_y).accuracy
                rec["wall_s"] = time.perf_counter() - t0
                rows.append(rec)
                print(json.dumps(rec), flush=True)
    return rows


def stuck_map(
    scales: list[float], fleet_seed: int = 5, rate: float = 2e-3, stuck_prior: float | None = None
) -> list[dict[str, Any]]:
    """Stuck cells of die LOTF-W01-X+000Y+000 found by the production characterization, against the truth."""
    addr = DieAddress("LOTF", 1, 0, 0)
    rows = []
    for scale in scales:
        fleet = SimulatedFleet(
            FleetConfig(seed=fleet_seed, variation=VariationConfig(variation_scale=scale, stuck_cell_rate=rate))
        )
        drv = SimulatedDriver(fleet=fleet, noise_seed=0).connect()
        drv.probe(addr)
        truth = oracle_driver_truth(drv, addr)  # ORACLE: for scoring only
        sig = characterize(drv, rng=0, config=CharacterizationConfig(stuck_prior=stuck_prior)).signature
        found = np.zeros_like(truth.stuck_mask)
        found[sig.stuck.macro, sig.stuck.row, sig.stuck.col] = True
        true = truth.stuck_mask & ~truth.dead_cols[:, None, :]
        rec = {
            "scale": scale,
            "true": int(true.sum()),
            "reported": int(found.sum()),
            "false": int((found & ~true).sum()),
            "candidates": int(sig.meta["stuck"]["candidates"]),
            "prior": float(sig.meta["stuck"]["prior"]),
        }
        rows.append(rec)
        print(json.dumps(rec), flush=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> str:
    out = ["| scale | setting | stuck prior | edge prior (LSB) | stuck found / hits / true | edge RMSE (LSB) | accuracy | with edges |", "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["scale"], r["setting"]) for r in rows})
    for scale, setting in keys:
        rs = [r for r in rows if r["scale"] == scale and r["setting"] == setting]
        m = {k: float(np.mean([r[k] for r in rs])) for k in rs[0] if isinstance(rs[0][k], int | float)}
        out.append(
            f"| {scale:g} | {setting} | {m['stuck_prior']:.2e} | {m['edge_prior_sigma_lsb']:.3f} | "
            f"{sum(r['stuck_found'] for r in rs)} / {sum(r['stuck_hits'] for r in rs)} / "
            f"{sum(r['stuck_true'] for r in rs)} | {m['edge_rmse_lsb']:.3f} | {100 * m['accuracy']:.2f} % | "
            f"{100 * m['accuracy_edges']:.2f} % |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.priors", description=__doc__.splitlines()[0])
    p.add_argument("--dies", type=int, default=3)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.5, 5.5])
    p.add_argument("--test-clips", type=int, default=360)
    p.add_argument("--seed", type=int, default=0, help="seed of the data subsets")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--stuck-map", action="store_true", help="count one die's stuck cells against the truth")
    p.add_argument("--stuck-prior", type=float, default=None, help="--stuck-map with this fixed prior")
    a = p.parse_args(argv)
    if a.stuck_map:
        found = stuck_map(a.scales, stuck_prior=a.stuck_prior)
        if a.json:
            a.json.write_text(json.dumps(found, indent=1) + "\n")
        return
    rows = run(a.dies, a.scales, a.test_clips, a.seed, a.model)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(summary(rows))


if __name__ == "__main__":
    main()

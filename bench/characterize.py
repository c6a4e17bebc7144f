"""Characterization per die: host CPU of estimation, tester seconds, stuck-cell maps, accuracy.

    python -m bench.characterize [--dies 6] [--seed 0] [--scale 4.5] [--curve] [--accuracy]
                                 [--stuck-prior P] [--json PATH]

On the simulated fleet (seed 2022), one die after another in this process with one BLAS / torch
thread, every die measured in every setting with the same read-noise seed:

* ``measure(dies, seed, ...)``: the production setting (:data:`DEFAULT_BUDGET` read vectors, each
  pattern broadcast into every macro, stuck cells confirmed by targeted re-reads) and, with
  ``before=True``, the earlier production setting (131,072 read vectors, every macro written and
  read one at a time, stuck cells by the statistic alone). Host ms are the CPU time of estimation
  (``CharacterizationResult.compute_cpu_s``), the median over the dies; tester seconds are what the
  driver charged. Stuck-cell recall and false positives are counted against the simulator's hidden
  truth (ORACLE, evaluation only). With ``accuracy=True`` every die is also compensated for the
  benchmark model and functionally tested (``kws-bnn@1`` on 360 test clips, as bench.quality).
  The stuck-cell prior of the short pass is measured on each die (its median is reported) unless
  ``stuck_prior`` (``--stuck-prior``) fixes one for the production setting.
* ``curve(...)``: accuracy against tester seconds over read budgets, for broadcast and one-macro-at-a-
  time writes (the figure of docs/calibration.md, "Tester time").

``cimcal bench`` calls :func:`measure` (``estimate_ms_median``, ``tester_s_per_die``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.calibration.characterize import DEFAULT_BUDGET, CharacterizationConfig, characterize
from hardware.driver import DieAddress
from hardware.sim.driver import SimulatedDriver
from hardware.sim.oracle import oracle_die_truth, oracle_fleet_config

FLEET_SEED = 2022
PREVIOUS_BUDGET = 131_072


@dataclass(frozen=True)
class Setting:
    """A characterization setting of the benchmark: its name, read budget and configuration."""

    name: str
    budget: int
    config: CharacterizationConfig


PRODUCTION = Setting("production", DEFAULT_BUDGET, CharacterizationConfig())
PREVIOUS = Setting(
    "previous (131,072 vectors, one macro at a time, statistic only)",
    PREVIOUS_BUDGET,
    CharacterizationConfig(broadcast=False, reread_stuck=False),
)


def _one_thread() -> None:
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(k, "1")
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
    import torch

    torch.set_num_threads(1)


def die_address(seed: int, die: int) -> DieAddress:
    """Dies spread over a wafer (radius 20 dies), so the wafer-level gradients differ from die to die."""
    xy = np.random.default_rng([FLEET_SEED, seed, die]).integers(-14, 15, size=2)
    return DieAddress(f"CB{seed % 100:02d}", 1 + die // 50, int(xy[0]), int(xy[1]))


def _driver(scale: float, seed: int, die: int) -> tuple[SimulatedDriver, DieAddress]:
    drv = SimulatedDriver(
        fleet_seed=FLEET_SEED, variation_scale=scale, noise_seed=1000 * seed + die
    ).connect()
    addr = die_address(seed, die)
    drv.probe(addr)
    return drv, addr


class _Accuracy:
    """Compensate a die's signature for the benchmark model and functionally test the image."""

    def __init__(self, model: str, seed: int) -> None:
        from bench.quality import _load

        self.data, self.ctx = _load(model, None, seed)

    def __call__(self, drv: SimulatedDriver, signature: Any, ecid: str) -> float:
        from app.calibration.functional import functional_test
        from app.calibration.pipeline import compensate

        comp = compensate(self.ctx, signature, ecid)
        return float(functional_test(drv, comp.image_bytes, self.data.test_x, self.data.test_y).accuracy)


def _die_record(
    setting: Setting, scale: float, seed: int, die: int, accuracy: _Accuracy | None
) -> dict[str, Any]:
    drv, addr = _driver(scale, seed, die)
    res = characterize(drv, budget=setting.budget, config=setting.config)
    sig = res.signature
    truth = oracle_die_truth(oracle_fleet_config(drv), addr)  # ORACLE: evaluation only
    true = truth.stuck_mask & ~truth.dead_cols[:, None, :] & ~sig.dead_cols[:, None, :]
    found = np.zeros_like(true)
    found[sig.stuck.macro, sig.stuck.row, sig.stuck.col] = True
    rec: dict[str, Any] = {
        "die": die,
        "ecid": addr.ecid,
        "estimate_cpu_ms": 1e3 * res.compute_cpu_s,
        "estimate_wall_ms": 1e3 * res.compute_s,
        "tester_s": res.tester_s,
        "writes": res.writes,
        "write_calls": res.write_calls,
        "read_vectors": res.read_vectors,
        "stuck_true": int(true.sum()),
        "stuck_found": int((found & true).sum()),
        "stuck_false": int((found & ~true).sum()),
        "has_cell_error": sig.has_cell_error,
        "stuck_prior": float(sig.meta["stuck"]["prior"]),
    }
    if accuracy is not None:
        rec["accuracy"] = accuracy(drv, sig, addr.ecid)
    return rec


def _summary(setting: Setting, recs: list[dict[str, Any]]) -> dict[str, Any]:
    n_true = sum(r["stuck_true"] for r in recs)
    n_found = sum(r["stuck_found"] for r in recs)
    n_false = sum(r["stuck_false"] for r in recs)
    out: dict[str, Any] = {
        "setting": setting.name,
        "budget": setting.budget,
        "dies": len(recs),
        "estimate_ms_median": statistics.median(r["estimate_cpu_ms"] for r in recs),
        "estimate_wall_ms_median": statistics.median(r["estimate_wall_ms"] for r in recs),
        "tester_s_per_die": statistics.fmean(r["tester_s"] for r in recs),
        "writes_per_die": statistics.fmean(r["writes"] for r in recs),
        "write_calls_per_die": statistics.fmean(r["write_calls"] for r in recs),
        "read_vectors_per_die": statistics.fmean(r["read_vectors"] for r in recs),
        "stuck_recall": n_found / n_true if n_true else 1.0,
        "stuck_false_positives": n_false,
        "stuck_true": n_true,
        "stuck_prior_median": statistics.median(r["stuck_prior"] for r in recs),
    }
    if recs and "accuracy" in recs[0]:
        acc = [r["accuracy"] for r in recs]
        out["accuracy_mean"] = statistics.fmean(acc)
        out["accuracy_min"] = min(acc)
    return out


def measure(
    dies: int = 6,
    seed: int = 0,
    *,
    scale: float = 4.5,
    accuracy: bool = False,
    before: bool = False,
    model: str = "kws-bnn@1",
    stuck_prior: float | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Production characterization on ``dies`` dies (and the previous setting with ``before``): the
    figures of the module docstring; top-level ``estimate_ms_median`` and ``tester_s_per_die`` are
    the production setting's."""
    _one_thread()
    acc = _Accuracy(model, seed) if accuracy else None
    prod_setting = PRODUCTION
    if stuck_prior is not None:
        name = f"production, stuck prior {stuck_prior:g}"
        prod_setting = Setting(name, DEFAULT_BUDGET, CharacterizationConfig(stuck_prior=stuck_prior))
    settings = [prod_setting, PREVIOUS] if before else [prod_setting]
    rows = []
    for setting in settings:
        recs = [_die_record(setting, scale, seed, d, acc) for d in range(dies)]
        rows.append(_summary(setting, recs))
        if log:
            log(_line(rows[-1]))
    prod = rows[0]
    out = {
        "estimate_ms_median": prod["estimate_ms_median"],
        "tester_s_per_die": prod["tester_s_per_die"],
        "scale": scale,
        "seed": seed,
        "fleet_seed": FLEET_SEED,
        "settings": rows,
    }
    return out


def curve(
    dies: int = 4,
    seed: int = 0,
    *,
    scale: float = 4.5,
    budgets: Sequence[int] = (2048, 4096, 8192, 16384, 32768, 131072),
    model: str = "kws-bnn@1",
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Accuracy against tester seconds per die over ``budgets``, broadcast and one-macro-at-a-time."""
    _one_thread()
    acc = _Accuracy(model, seed)
    rows = []
    for broadcast in (True, False):
        for budget in budgets:
            name = f"{'broadcast' if broadcast else 'one macro at a time'}, {budget}"
            setting = Setting(name, budget, CharacterizationConfig(broadcast=broadcast))
            recs = [_die_record(setting, scale, seed, d, acc) for d in range(dies)]
            rows.append(_summary(setting, recs) | {"broadcast": broadcast})
            if log:
                log(_line(rows[-1]))
    return rows


def _line(r: dict[str, Any]) -> str:
    acc = (
        f" | accuracy {100 * r['accuracy_mean']:.1f} / {100 * r['accuracy_min']:.1f} %"
        if "accuracy_mean" in r
        else ""
    )
    return (
        f"{r['setting']}: estimate {r['estimate_ms_median']:.1f} ms CPU (median), tester {r['tester_s_per_die']:.4f} s, "
        f"{r['write_calls_per_die']:.0f} write calls, {r['read_vectors_per_die']:.0f} read vectors, "
        f"stuck recall {100 * r['stuck_recall']:.1f} % ({r['stuck_true']} cells), "
        f"{r['stuck_false_positives']} false, stuck prior {r['stuck_prior_median']:.2e} (median){acc}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dies", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=4.5, help="variation_scale of the simulated fleet")
    p.add_argument("--accuracy", action="store_true", help="compensate and functionally test every die")
    p.add_argument("--before", action="store_true", help="also measure the previous production setting")
    p.add_argument("--curve", action="store_true", help="accuracy vs tester seconds over read budgets")
    p.add_argument("--budgets", type=int, nargs="*", default=[2048, 4096, 8192, 16384, 32768, 131072])
    p.add_argument("--model", default="kws-bnn@1")
    p.add_argument(
        "--stuck-prior", type=float, default=None, help="fix the production stuck prior (default: measured)"
    )
    p.add_argument("--json", help="write the figures to this file")
    a = p.parse_args(argv)
    out: dict[str, Any] = measure(
        a.dies,
        a.seed,
        scale=a.scale,
        accuracy=a.accuracy,
        before=a.before,
        model=a.model,
        stuck_prior=a.stuck_prior,
        log=print,
    )
    if a.curve:
        out["curve"] = curve(a.dies, a.seed, scale=a.scale, budgets=a.budgets, model=a.model, log=print)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()

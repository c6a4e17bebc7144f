"""What the quality benchmark does to one die, in worker processes.

Each worker holds the benchmark's model and labelled inputs (:class:`~bench.quality_data.BenchData`)
and the driver the dies are measured on (:class:`DriverSpec`: any registered driver, the simulated
fleet by default), and runs one task per die: every method's image programmed and functionally
tested (:func:`die_task`), one characterization budget (:func:`budget_task`), or the compensation
variants of the ablation (:func:`ablation_task`). The ORACLE method runs only where the driver
offers an oracle (:func:`bench.oracle.oracle_for`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from typing import Any

import numpy as np

from app.calibration.baselines import offset_only_image, two_point_image, uncalibrated_image
from app.calibration.characterize import characterize
from app.calibration.compensate import CompensationConfig, choose_replicas
from app.calibration.finetune import FinetuneConfig
from app.calibration.functional import functional_test
from app.calibration.pipeline import ModelContext, compensate
from bench.finetune import finetune_on_die
from bench.oracle import oracle_for
from bench.quality_data import BenchData
from hardware.chip import encode_image, execute_network, ideal_readout
from hardware.driver import DieAddress, Driver
from hardware.registry import create_driver, driver_class, driver_version, validate_options

FLEET_SEED = 2022
FAST = CompensationConfig(use_cell_error=False, replicas=1)
SIMULATED = "simulated"

_STATE: dict[str, Any] = {}


@dataclass(frozen=True)
class DriverSpec:
    """The driver the benchmark's dies are measured on: a registered driver, its options, and the
    option a benchmark *scale* sets (``variation_scale`` on the simulated fleet; ``None``: the driver
    runs with its options as given and the benchmark has one row).

    Every die gets its own read-noise seed where the driver's ``Options`` have a ``noise_seed`` (and
    the options do not fix one), and the simulated fleet the benchmark's seed (``FLEET_SEED``).
    """

    name: str = SIMULATED
    options: Mapping[str, Any] = field(default_factory=dict)
    scale_option: str | None = "variation_scale"

    def __post_init__(self) -> None:
        fields = driver_class(self.name).Options.model_fields
        if self.scale_option is not None and self.scale_option not in fields:
            raise ValueError(
                f"driver {self.name!r} has no option {self.scale_option!r} to scale; its options: {sorted(fields)}"
            )
        validate_options(self.name, self.options, source="--driver-options")

    @property
    def has_scales(self) -> bool:
        return self.scale_option is not None

    def die_options(self, scale: float | str | None, die: int) -> dict[str, Any]:
        fields = driver_class(self.name).Options.model_fields
        opts = dict(self.options)
        if self.name == SIMULATED:
            opts.setdefault("fleet_seed", FLEET_SEED)
        if self.scale_option is not None and scale is not None:
            opts[self.scale_option] = scale
        if "noise_seed" in fields and opts.get("noise_seed") is None:
            opts["noise_seed"] = 1000 + die
        if "default_timeout_s" in fields:
            opts.setdefault("default_timeout_s", 3600.0)
        return opts

    def build(self, scale: float | str | None, die: int) -> Driver:
        """A connected driver for die ``die`` of the row at ``scale``."""
        return create_driver(self.name, self.die_options(scale, die)).connect()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": driver_version(self.name),
            "options": dict(self.options),
            "scale_option": self.scale_option,
        }


def _init_worker(data: BenchData, spec: DriverSpec) -> None:
    import torch

    torch.set_num_threads(1)
    _STATE["data"] = data
    _STATE["spec"] = spec
    _STATE["ctx"] = ModelContext.from_bytes(data.stats_bytes, data.program)
    geometry = spec.build(None, 0).geometry()
    ideal = uncalibrated_image(data.program, geometry)
    _STATE["teacher"] = execute_network(ideal, data.tune_x, ideal_readout(ideal.macros, geometry))


@contextmanager
def worker_pool(
    data: BenchData, workers: int, spec: DriverSpec | None = None
) -> Iterator[ProcessPoolExecutor]:
    """Worker processes (spawned, single-threaded BLAS and torch) holding the model, the inputs and
    the driver spec (spawned workers inherit ``sys.path``, so a plugin found here is found there)."""
    env_keys = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in env_keys}
    os.environ.update(dict.fromkeys(env_keys, "1"))  # inherited by the spawned workers
    try:
        with ProcessPoolExecutor(
            max_workers=max(1, workers),
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(data, spec or DriverSpec()),
        ) as pool:
            yield pool
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def die_address(scale_index: int, die: int) -> DieAddress:
    # Dies spread over a wafer (radius 20 dies): the wafer-level gradients differ from die to die.
    ring = np.random.default_rng([FLEET_SEED, scale_index, die]).integers(-14, 15, size=2)
    return DieAddress(f"QB{scale_index:02d}", 1 + die // 50, int(ring[0]), int(ring[1]))


def die_driver(scale: float | str | None, die: int, spec: DriverSpec | None = None) -> Driver:
    """A connected driver for die ``die`` of the row at ``scale`` (the worker's spec by default)."""
    chosen = spec or _STATE.get("spec") or DriverSpec()
    assert isinstance(chosen, DriverSpec)
    return chosen.build(scale, die)


def _accuracy(drv: Driver, blob: bytes) -> tuple[float, float]:
    data: BenchData = _STATE["data"]
    res = functional_test(drv, blob, data.test_x, data.test_y)
    return res.accuracy, res.tester_s


def die_task(
    scale_index: int, scale: float | str | None, die: int, finetune: bool, finetune_budget_ratio: float
) -> dict[str, Any]:
    """Every method on one die, all with cimcal's copies of the row tiles and its signature.

    Costs per method: ``<method>_tester_s`` (tester seconds before the functional test, which is the
    same for every method) and ``<method>_host_s`` (host seconds, the simulated die excluded where
    the method does not run it).
    """
    data: BenchData = _STATE["data"]
    ctx: ModelContext = _STATE["ctx"]
    addr = die_address(scale_index, die)
    drv = die_driver(scale, die)
    drv.probe(addr)
    g = drv.geometry()
    replicas = choose_replicas(data.program, g, CompensationConfig())
    rec: dict[str, Any] = {"scale": scale, "die": die, "ecid": addr.ecid, "replicas_all": replicas}
    rec["uncalibrated"], rec["functional_tester_s"] = _accuracy(
        drv, encode_image(uncalibrated_image(data.program, g, replicas=replicas))
    )
    rec.update(uncalibrated_tester_s=0.0, uncalibrated_host_s=0.0)
    t0 = time.perf_counter()
    char = characterize(drv, rng=np.random.default_rng([FLEET_SEED, scale_index, die]))
    rec["characterize_wall_s"] = time.perf_counter() - t0
    sig = char.signature
    rec.update(
        reads=char.reads,
        read_vectors=char.read_vectors,
        writes=char.writes,
        characterize_tester_s=char.tester_s,
        characterize_compute_s=char.compute_s,
        signature_bytes=sig.nbytes,
        n_dead_cols=sig.n_dead_cols,
        n_stuck_cells=sig.n_stuck_cells,
        has_cell_error=sig.has_cell_error,
    )
    for name, make in (("baseline_a", offset_only_image), ("baseline_b", two_point_image)):
        t0 = time.perf_counter()
        image = make(data.program, sig, addr.ecid, replicas=replicas)
        rec[f"{name}_host_s"] = char.compute_s + time.perf_counter() - t0
        rec[f"{name}_tester_s"] = char.tester_s
        rec[name], _ = _accuracy(drv, encode_image(image))
    comp = compensate(ctx, sig, addr.ecid)
    rec["cimcal"], rec["cimcal_functional_tester_s"] = _accuracy(drv, comp.image_bytes)
    rec.update(
        cimcal_tester_s=char.tester_s,
        cimcal_host_s=char.compute_s + comp.compute_s,
        compensate_s=comp.compute_s,
        predicted_agreement=comp.predicted_agreement,
        replicas=comp.replicas,
        calibratable=comp.calibratable,
    )
    oracle = oracle_for(drv)
    if oracle is not None:
        orc = compensate(ctx, oracle(addr), addr.ecid)  # ORACLE
        rec["oracle"], _ = _accuracy(drv, orc.image_bytes)
    if finetune:
        ft = finetune_on_die(
            drv,
            data.program,
            two_point_image(data.program, sig, addr.ecid, replicas=replicas),
            data.tune_x,
            data.tune_y,
            _STATE["teacher"],
            tester_budget_s=finetune_budget_ratio * char.tester_s,
            config=FinetuneConfig(),
            rng=np.random.default_rng([FLEET_SEED, scale_index, die, 7]),
        )
        rec["finetune"], _ = _accuracy(drv, ft.image_bytes)
        rec.update(
            finetune_tester_s=char.tester_s + ft.tester_s,
            finetune_host_s=char.compute_s + ft.host_s,
            finetune_passes=ft.passes,
            finetune_tune_start=ft.start_accuracy,
            finetune_tune_best=ft.tune_accuracy,
        )
    return rec


def budget_task(scale_index: int, scale: float | str | None, die: int, budget: int) -> dict[str, Any]:
    ctx: ModelContext = _STATE["ctx"]
    addr = die_address(scale_index, die)
    drv = die_driver(scale, die)
    drv.probe(addr)
    char = characterize(drv, budget=budget, rng=np.random.default_rng([FLEET_SEED, scale_index, die, budget]))
    comp = compensate(ctx, char.signature, addr.ecid)
    acc, _ = _accuracy(drv, comp.image_bytes)
    return {
        "scale": scale,
        "die": die,
        "budget": budget,
        "accuracy": acc,
        "read_vectors": char.read_vectors,
        "tester_s": char.tester_s,
        "compute_s": char.compute_s + comp.compute_s,
        "signature_bytes": char.signature.nbytes,
        "has_cell_error": char.signature.has_cell_error,
    }


ABLATIONS: dict[str, CompensationConfig] = {
    "cimcal (production)": CompensationConfig(),
    "without per-cell errors": CompensationConfig(use_cell_error=False),
    "with ADC edges": CompensationConfig(use_edges=True),
    "without rate-bias penalty": CompensationConfig(bias_weight=0.0),
    "2 copies": CompensationConfig(replicas=2),
    "1 copy": CompensationConfig(replicas=1),
    "1 copy, without rate-bias penalty": CompensationConfig(replicas=1, bias_weight=0.0),
}


def ablation_task(scale_index: int, scale: float | str | None, die: int) -> dict[str, Any]:
    from app.calibration.characterize import CharacterizationConfig
    from app.calibration.evaluate import measured_layer_agreement

    data: BenchData = _STATE["data"]
    ctx: ModelContext = _STATE["ctx"]
    addr = die_address(scale_index, die)
    drv = die_driver(scale, die)
    drv.probe(addr)
    char = characterize(
        drv,
        rng=np.random.default_rng([FLEET_SEED, scale_index, die]),
        config=CharacterizationConfig(edges=True),
    )
    rec: dict[str, Any] = {"scale": scale, "die": die}
    for name, cfg in ABLATIONS.items():
        if name != "with ADC edges":
            cfg = replace(cfg, use_edges=False)
        comp = compensate(ctx, char.signature, addr.ecid, config=cfg)
        agree = measured_layer_agreement(drv, comp.image, data.program, data.tune_x[:24], rng=die)
        rec[name] = {
            "accuracy": _accuracy(drv, comp.image_bytes)[0],
            "agreement": float(np.mean(list(agree.values()))),
            "predicted": comp.predicted_agreement,
        }
    return rec

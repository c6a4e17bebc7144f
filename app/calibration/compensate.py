"""Compensation: a die's weight image from the model, its activation statistics and the die's signature.

No die in the loop: everything here is pure compute on what characterization measured.

The image differs from the ideal one in three ways (details and measurements in docs/calibration.md):

1. **Replicated row tiles.** Macros the model leaves idle hold copies of its row tiles; the digital
   periphery adds the codes of every tile of a layer, so ``r`` copies add ``r`` times the signal and
   only ``sqrt(r)`` times the (independent) read noise, column offsets and cell mismatch, and the
   integer threshold gets ``r`` times finer relative to the signal.
2. **Column re-routing.** A logical column whose bit line is dead (or holds stuck cells that disagree
   with the weights on busy rows) moves to a free healthy bit line: a spare, or a data column the
   layer does not use; a tile whose macro cannot be repaired moves to an idle macro.
3. **Per-channel thresholds.** For each output channel we predict, for every sampled calibration
   patch, the distribution of the summed codes on this die (gain, offset, cell errors, stuck cells,
   ADC edges, read noise, all from the signature) and choose the integer threshold that maximises
   the expected agreement with the ideal chip's decisions (weighted by the patch sample weights)
   while keeping the channel's expected firing rate equal to the ideal one (a penalty on the rate
   bias): the expected output matches the ideal.

The binary weights stay the model's: weight flips (to move an expected sum by less than one
threshold step) were measured not to pay once the tiles are copied.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray

from app.calibration.activations import ActivationStats
from app.calibration.compensation.config import ALGORITHM_VERSION, CompensationConfig
from app.calibration.compensation.layout import choose_replicas, place_routed, place_tiles
from app.calibration.compensation.precompute import ModelTables, model_tables
from app.calibration.compensation.prediction import Instance, tile_instances_many
from app.calibration.compensation.thresholds import optimise_thresholds
from app.calibration.signature import Signature
from hardware.chip import ImageHeader, NetworkProgram, Tile, WeightImage, strip_binary_weights

__all__ = [
    "ALGORITHM_VERSION",
    "CompensationConfig",
    "CompensationOutput",
    "compensate_image",
    "compensate_images",
]


CPU_DIES_PER_SEARCH = 4
"""Dies whose threshold searches run as one on the CPU (beyond 4, no gain per die was measured)."""
CPU_DIES_PER_PRODUCT = 8
"""Dies whose per-cell products are computed as one (the sampled patches, tens of MB per row tile,
are read once for all of them: 3x less time per die at 8 than one by one)."""


@dataclass(frozen=True)
class CompensationOutput:
    """What :func:`compensate_image` computes for one die and one model."""

    image: WeightImage
    predicted_agreement: float
    layer_agreement: dict[str, float]
    replicas: int
    rerouted_cols: int
    unrepaired_dead_cols: int
    compute_s: float
    notes: list[str] = field(default_factory=list)


@dataclass
class _DiePlan:
    """One die's layout and, per column tile of every layer, the instances of its tiles."""

    signature: Signature
    header: ImageHeader
    replicas: int
    tiles: tuple[Tile, ...]
    col_map: NDArray[np.int16]
    macros: NDArray[np.int8]
    moved: int
    unrepaired: int
    groups: list[tuple[str, int, int, list[Instance]]]  # (layer, c0, nc, instances)


def _layout(
    program: NetworkProgram,
    stats: ActivationStats,
    signature: Signature,
    header: ImageHeader,
    config: CompensationConfig,
) -> _DiePlan:
    """The die's layout; its instances come after (:func:`_predict`, several dies at once)."""
    g = signature.geometry
    if g != stats.geometry:
        raise ValueError("signature and activation statistics were made for different geometries")
    replicas = choose_replicas(program, g, config)
    tiles, col_map, moved, unrepaired = place_tiles(
        program, stats, signature, replicas, reroute=config.reroute
    )
    macros = place_routed(program, tiles, col_map, g)
    return _DiePlan(signature, header, replicas, tiles, col_map, macros, moved, unrepaired, [])


def _predict(
    program: NetworkProgram, plans: Sequence[_DiePlan], config: CompensationConfig, tables: ModelTables
) -> None:
    """Every plan's instances, per column tile of every layer (the per-cell products of all the
    ``plans`` dies computed together)."""
    edges = [p.signature.edges_mac() if config.use_edges else None for p in plans]
    for layer in program.binary_layers():
        per_die = [[t for t in p.tiles if t.layer == layer.name] for p in plans]
        for ct in sorted({t.col_tile for t in per_die[0]}):
            groups = [[t for t in ts if t.col_tile == ct] for ts in per_die]
            c0, nc = groups[0][0].col_start, groups[0][0].n_cols
            instances = tile_instances_many(
                tables,
                layer.name,
                groups,
                [p.col_map for p in plans],
                [p.signature for p in plans],
                config,
                edges,
            )
            for p, inst in zip(plans, instances, strict=True):
                p.groups.append((layer.name, c0, nc, inst))


def _output(
    program: NetworkProgram,
    plan: _DiePlan,
    thresholds: dict[str, NDArray[np.int32]],
    agreement: dict[str, NDArray[np.float64]],
    compute_s: float,
) -> CompensationOutput:
    signature = plan.signature
    image = WeightImage(
        header=plan.header,
        geometry=signature.geometry,
        program=strip_binary_weights(program),
        tiles=plan.tiles,
        macros=plan.macros,
        col_map=plan.col_map,
        thresholds=thresholds,
    )
    image.validate()
    layer_agree = {name: float(a.mean()) for name, a in agreement.items()}
    notes = []
    if plan.unrepaired:
        notes.append(
            f"{plan.unrepaired} used column(s) left on a dead bit line: no free bit line in its macro"
        )
    unusable = signature.meta.get("unusable_cols") or {}
    if unusable:
        why = ", ".join(f"{reason} {len(cols)}" for reason, cols in sorted(unusable.items()))
        notes.append(f"bit lines characterization found unusable, treated as dead: {why}")
    return CompensationOutput(
        image=image,
        predicted_agreement=float(np.mean(list(layer_agree.values()))) if layer_agree else 1.0,
        layer_agreement=layer_agree,
        replicas=plan.replicas,
        rerouted_cols=plan.moved,
        unrepaired_dead_cols=plan.unrepaired,
        compute_s=compute_s,
        notes=notes,
    )


def _empty_results(
    program: NetworkProgram,
) -> tuple[dict[str, NDArray[np.int32]], dict[str, NDArray[np.float64]]]:
    layers = program.binary_layers()
    return (
        {layer.name: np.zeros(layer.n_out, np.int32) for layer in layers},
        {layer.name: np.zeros(layer.n_out) for layer in layers},
    )


def compensate_image(
    program: NetworkProgram,
    stats: ActivationStats,
    signature: Signature,
    header: ImageHeader,
    config: CompensationConfig | None = None,
) -> CompensationOutput:
    """The weight image of ``program`` for the die described by ``signature`` (deterministic)."""
    t0 = time.perf_counter()
    config = config or CompensationConfig()
    tables = model_tables(program, stats)
    plan = _layout(program, stats, signature, header, config)
    _predict(program, [plan], config, tables)
    thresholds, agreement = _empty_results(program)
    for name, c0, nc, inst in plan.groups:
        thr, agree = optimise_thresholds(
            stats.layers[name],
            c0,
            nc,
            inst,
            signature.geometry,
            config,
            at_boundary=tables.boundary(name, c0, nc),
        )
        thresholds[name][c0 : c0 + nc], agreement[name][c0 : c0 + nc] = thr, agree
    return _output(program, plan, thresholds, agreement, time.perf_counter() - t0)


def compensate_images(
    program: NetworkProgram,
    stats: ActivationStats,
    signatures: Sequence[Signature],
    headers: Sequence[ImageHeader],
    config: CompensationConfig | None = None,
    *,
    device: torch.device | str | None = None,
    dies_per_search: int | None = None,
) -> list[CompensationOutput]:
    """The images of many dies at once: each die's layout on its own, the per-cell products of
    :data:`CPU_DIES_PER_PRODUCT` dies as one (the model's sampled patches read once for all of them),
    then every column tile's threshold search for ``dies_per_search`` dies at a time as one batch
    (torch on ``device``, CPU by default; default: every die on a GPU, :data:`CPU_DIES_PER_SEARCH`
    on the CPU, where larger batches gain nothing).

    The same images as :func:`compensate_image` die by die (every channel's search depends on its
    own data only, and the batched products were measured to give the per-die bits, which
    ``tests/calibration/test_compensate.py`` checks). ``compute_s`` of each output is the batch's
    host time divided by its dies.
    """
    if len(signatures) != len(headers):
        raise ValueError(f"{len(signatures)} signatures but {len(headers)} headers")
    if not signatures:
        return []
    t0 = time.perf_counter()
    config = config or CompensationConfig()
    dev = None if device is None else torch.device(device)
    tables = model_tables(program, stats)
    plans = [_layout(program, stats, s, h, config) for s, h in zip(signatures, headers, strict=True)]
    results = [_empty_results(program) for _ in plans]
    for start in range(0, len(plans), CPU_DIES_PER_PRODUCT):
        _predict(program, plans[start : start + CPU_DIES_PER_PRODUCT], config, tables)
    per = dies_per_search or (len(plans) if dev is not None and dev.type != "cpu" else CPU_DIES_PER_SEARCH)
    for start in range(0, len(plans), per):
        _search_batch(tables, plans[start : start + per], results[start : start + per], config, dev)
    each_s = (time.perf_counter() - t0) / len(plans)
    return [_output(program, p, thr, agr, each_s) for p, (thr, agr) in zip(plans, results, strict=True)]


def _search_batch(
    tables: ModelTables,
    plans: Sequence[_DiePlan],
    results: Sequence[tuple[dict[str, NDArray[np.int32]], dict[str, NDArray[np.float64]]]],
    config: CompensationConfig,
    device: torch.device | None,
) -> None:
    n_dies = len(plans)
    for gi, (name, c0, nc, first) in enumerate(plans[0].groups):
        stacked = [Instance.stack([p.groups[gi][3][k] for p in plans]) for k in range(len(first))]
        thr, agree = optimise_thresholds(
            tables.repeated(name, c0, nc, n_dies),
            0,
            nc * n_dies,
            stacked,
            tables.stats.geometry,
            config,
            device=device,
            at_boundary=np.concatenate([tables.boundary(name, c0, nc)] * n_dies),
        )
        for d, (thresholds, agreement) in enumerate(results):
            thresholds[name][c0 : c0 + nc] = thr[d * nc : (d + 1) * nc]
            agreement[name][c0 : c0 + nc] = agree[d * nc : (d + 1) * nc]

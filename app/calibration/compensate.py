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
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from app.calibration.activations import ActivationStats
from app.calibration.compensation.config import ALGORITHM_VERSION, CompensationConfig
from app.calibration.compensation.layout import choose_replicas, place_routed, place_tiles
from app.calibration.compensation.precompute import model_tables
from app.calibration.compensation.prediction import tile_instances
from app.calibration.compensation.thresholds import optimise_thresholds
from app.calibration.signature import Signature
from hardware.chip import ImageHeader, NetworkProgram, WeightImage, strip_binary_weights

__all__ = ["ALGORITHM_VERSION", "CompensationConfig", "CompensationOutput", "compensate_image"]


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
    g = signature.geometry
    if g != stats.geometry:
        raise ValueError("signature and activation statistics were made for different geometries")
    replicas = choose_replicas(program, g, config)
    tiles, col_map, moved, unrepaired = place_tiles(
        program, stats, signature, replicas, reroute=config.reroute
    )
    macros = place_routed(program, tiles, col_map, g)
    tables = model_tables(program, stats)
    thresholds: dict[str, NDArray[np.int32]] = {}
    layer_agree: dict[str, float] = {}
    for layer in program.binary_layers():
        ls = stats.layers[layer.name]
        thr = np.zeros(layer.n_out, np.int32)
        agree = np.zeros(layer.n_out)
        layer_tiles = [t for t in tiles if t.layer == layer.name]
        for ct in sorted({t.col_tile for t in layer_tiles}):
            group = [t for t in layer_tiles if t.col_tile == ct]
            c0, nc = group[0].col_start, group[0].n_cols
            inst = tile_instances(tables, layer.name, group, col_map, signature, config)
            thr[c0 : c0 + nc], agree[c0 : c0 + nc] = optimise_thresholds(ls, c0, nc, inst, signature, config)
        thresholds[layer.name] = thr
        layer_agree[layer.name] = float(agree.mean())
    image = WeightImage(
        header=header,
        geometry=g,
        program=strip_binary_weights(program),
        tiles=tiles,
        macros=macros,
        col_map=col_map,
        thresholds=thresholds,
    )
    image.validate()
    notes = []
    if unrepaired:
        notes.append(f"{unrepaired} used column(s) left on a dead bit line: no free bit line in its macro")
    unusable = signature.meta.get("unusable_cols") or {}
    if unusable:
        why = ", ".join(f"{reason} {len(cols)}" for reason, cols in sorted(unusable.items()))
        notes.append(f"bit lines characterization found unusable, treated as dead: {why}")
    return CompensationOutput(
        image=image,
        predicted_agreement=float(np.mean(list(layer_agree.values()))) if layer_agree else 1.0,
        layer_agreement=layer_agree,
        replicas=replicas,
        rerouted_cols=moved,
        unrepaired_dead_cols=unrepaired,
        compute_s=time.perf_counter() - t0,
        notes=notes,
    )

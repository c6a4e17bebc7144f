"""Baselines the benchmark compares cimcal with (not used to serve chips).

* Baseline A, offset-only: each channel's threshold shifted by the measured column offsets of its
  row tiles (what a per-column bias trim does). No gain, no defects, no routing.
* Baseline B, per-column output scaling, as IBM aihwkit's drift compensation does it: a per-column
  scale (here the measured column gain, what aihwkit estimates from a reference read) applied
  digitally, i.e. the threshold scaled by it. No offset, no defects, no routing.
* Fine-tuning with the die in the loop (what a user would do without a signature): coordinate
  search on the digital thresholds, scoring each candidate with ``run_network`` on a tuning set,
  for a fixed number of evaluations.

A and B use the same signature as cimcal, so the comparison isolates the compensation method.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from app.calibration.signature import Signature
from hardware.chip import (
    ChipGeometry,
    ImageHeader,
    NetworkProgram,
    WeightImage,
    build_image,
    encode_image,
    ideal_threshold_codes,
    map_network,
)
from hardware.driver import Driver


def uncalibrated_image(program: NetworkProgram, geometry: ChipGeometry, ecid: str = "") -> WeightImage:
    """The ideal image, as if the die had no variation."""
    return build_image(
        program, geometry, ImageHeader(ecid, program.name, program.version, "", "uncalibrated")
    )


def _tile_sums(
    program: NetworkProgram, signature: Signature, per_col: NDArray[np.float32]
) -> dict[str, list[NDArray[np.float64]]]:
    """For each binary layer, the per-row-tile values (Cout,) of a (n_macros, phys_cols) quantity."""
    g = signature.geometry
    out: dict[str, list[NDArray[np.float64]]] = {}
    for t in map_network(program, g):
        layer = program.layer(t.layer)
        parts = out.setdefault(t.layer, [np.zeros(layer.n_out) for _ in range(-(-layer.n_rows // g.rows))])
        parts[t.row_tile][t.col_start : t.col_start + t.n_cols] = per_col[t.macro, : t.n_cols]
    return out


def offset_only_image(program: NetworkProgram, signature: Signature, ecid: str = "") -> WeightImage:
    """Baseline A: threshold + sum of the measured column offsets of the channel's row tiles."""
    g = signature.geometry
    ideal = ideal_threshold_codes(program, g)
    offs = _tile_sums(program, signature, signature.offset_mac)
    thr = {
        name: np.rint(ideal[name] + np.sum(offs[name], axis=0) / g.adc_lsb_mac).astype(np.int32)
        for name in ideal
    }
    return build_image(
        program,
        g,
        ImageHeader(ecid, program.name, program.version, signature.sha256, "baseline-A-offset"),
        thresholds=thr,
    )


def column_scaling_image(program: NetworkProgram, signature: Signature, ecid: str = "") -> WeightImage:
    """Baseline B: threshold scaled by the mean measured gain of the channel's row tiles (no offset)."""
    g = signature.geometry
    ideal = ideal_threshold_codes(program, g)
    gains = _tile_sums(program, signature, signature.gain)
    thr = {}
    for name, t_ideal in ideal.items():
        gain = np.mean(gains[name], axis=0)
        gain = np.where(gain > 0.05, gain, 1.0)  # a dead column has no gain to undo
        thr[name] = np.rint(gain * (t_ideal - 0.5) + 0.5).astype(np.int32)
    return build_image(
        program,
        g,
        ImageHeader(ecid, program.name, program.version, signature.sha256, "baseline-B-scale"),
        thresholds=thr,
    )


@dataclass(frozen=True)
class FinetuneResult:
    """Die-in-the-loop threshold search: the image it settled on and what the search cost."""

    image: WeightImage
    image_bytes: bytes
    tune_accuracy: float
    evaluations: int
    tester_s: float
    wall_s: float


def finetune_thresholds(
    driver: Driver,
    program: NetworkProgram,
    features: NDArray[np.float32],
    labels: NDArray[np.integer],
    *,
    evaluations: int = 40,
    layer_steps: tuple[int, ...] = (-3, -2, -1, 1, 2, 3),
    channels_per_move: int = 8,
    rng: np.random.Generator | int | None = None,
    ecid: str = "",
) -> FinetuneResult:
    """Greedy search on the thresholds of the die under the probe, ``evaluations`` network runs.

    First a per-layer common shift (coordinate search over ``layer_steps``), then random moves of
    ``channels_per_move`` channels of one layer by +-1, kept when the tuning accuracy improves.
    ``features`` (N, C, H, W) float32 / ``labels`` (N,) are the tuning set (not the test set).
    """
    gen = np.random.default_rng(rng)
    g = driver.geometry()
    base = uncalibrated_image(program, g, ecid)
    thr = {k: v.copy() for k, v in base.thresholds.items()}
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels).astype(np.int64)
    t0, s0 = time.perf_counter(), driver.tester_time_s
    used = 0

    def score(cand: dict[str, NDArray[np.int32]]) -> float:
        nonlocal used
        used += 1
        image = build_image(program, g, base.header, thresholds=cand)
        driver.program_image(encode_image(image))
        pred = driver.run_network(x).argmax(axis=1)
        return float((pred == y).mean())

    best = score(thr)
    names = list(thr)
    for name in names:
        for step in layer_steps:
            if used >= evaluations:
                break
            cand = {**thr, name: thr[name] + np.int32(step)}
            acc = score(cand)
            if acc > best:
                best, thr = acc, cand
    while used < evaluations:
        name = names[int(gen.integers(len(names)))]
        n_out = thr[name].shape[0]
        pick = gen.choice(n_out, size=min(channels_per_move, n_out), replace=False)
        delta = np.zeros(n_out, np.int32)
        delta[pick] = gen.choice(np.array([-1, 1], np.int32), size=pick.size)
        cand = {**thr, name: thr[name] + delta}
        acc = score(cand)
        if acc > best:
            best, thr = acc, cand
    image = build_image(program, g, base.header, thresholds=thr)
    return FinetuneResult(
        image=image,
        image_bytes=encode_image(image),
        tune_accuracy=best,
        evaluations=used,
        tester_s=driver.tester_time_s - s0,
        wall_s=time.perf_counter() - t0,
    )

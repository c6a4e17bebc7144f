"""Measured activation agreement: how often a die's binary layers decide as the ideal chip does.

This is the quantity compensation maximises (its prediction is ``predicted_agreement``). Each binary
layer is fed the *ideal* inputs (so errors do not compound) and its tiles are read through the
driver with the image's routing and thresholds. For benchmarks and tests: it costs tester reads.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from hardware.chip import (
    ImageHeader,
    NetworkProgram,
    WeightImage,
    build_image,
    encode_image,
    execute_network,
    ideal_readout,
)
from hardware.driver import Driver

Read = Callable[[int, NDArray[np.uint8]], NDArray[np.int16]]


def measured_layer_agreement(
    driver: Driver,
    image: WeightImage,
    program: NetworkProgram,
    features: NDArray[np.float32],
    *,
    max_patches: int = 2048,
    rng: np.random.Generator | int | None = None,
) -> dict[str, float]:
    """Per binary layer, the fraction of (patch, channel) decisions of the die equal to the ideal chip's.

    ``image`` (an image of ``program``, which carries the weights) is programmed into the die under
    the probe; ``features`` (N, C, H, W) float32; at most ``max_patches`` patches per layer are read.
    """
    gen = np.random.default_rng(rng)
    g = image.geometry
    ref = build_image(program, g, ImageHeader("", program.name, program.version, "", "ideal"))
    ideal_read = ideal_readout(ref.macros, g)
    taps: dict[str, list[NDArray[np.uint8]]] = {}
    execute_network(ref, features, ideal_read, tap=lambda name, x: taps.setdefault(name, []).append(x))
    driver.program_image(encode_image(image))
    out: dict[str, float] = {}
    for layer in program.binary_layers():
        patches = np.concatenate(taps[layer.name])
        if patches.shape[0] > max_patches:
            patches = patches[np.sort(gen.choice(patches.shape[0], size=max_patches, replace=False))]
        ideal = layer_decisions(ref, layer.name, patches, ideal_read)
        die = layer_decisions(image, layer.name, patches, driver.read_macro)
        out[layer.name] = float((ideal == die).mean())
    return out


def layer_decisions(
    image: WeightImage, layer: str, patches: NDArray[np.uint8], read: Read
) -> NDArray[np.bool_]:
    """Binary outputs (n, Cout) of one layer of ``image`` for ``patches`` (n, K) read through ``read``."""
    g = image.geometry
    n_out = image.thresholds[layer].shape[0]
    acc = np.zeros((patches.shape[0], n_out), np.int64)
    buf = np.zeros((patches.shape[0], g.rows), np.uint8)
    for t in image.tiles:
        if t.layer != layer:
            continue
        buf[:, : t.n_rows] = patches[:, t.row_start : t.row_start + t.n_rows]
        buf[:, t.n_rows :] = 0
        codes = read(t.macro, buf)
        acc[:, t.col_start : t.col_start + t.n_cols] += codes[:, image.col_map[t.macro, : t.n_cols]]
    return np.asarray(acc >= image.thresholds[layer][None, :])

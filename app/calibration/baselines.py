"""Baselines the benchmark compares cimcal with (not used to serve chips).

Every baseline gets what cimcal gets: the same copies of the model's row tiles on idle macros
(``replicas``, cimcal's :func:`~app.calibration.compensate.choose_replicas`) and the same signature.
They differ only in how the per-channel integer thresholds are set; none re-routes columns:

* uncalibrated : the ideal thresholds, scaled to the copies (no trim);
* A, offset only : the ideal boundary plus the measured column offsets of every tile of the channel
  (a per-column bias trim);
* B, gain + offset (the standard two-point trim): each tile's column read as ``gain * sum + offset``,
  both measured; the boundary of the ideal sum mapped through it. A dead bit line is what a
  two-point trim measures it to be: gain 0, offset its stuck code.

The periphery compares the digital sum of the codes of a channel's tiles with one integer
threshold, so a trim can only move that threshold. With ``r`` copies the ideal decision
``sum_i a_i w_i >= T`` becomes ``sum over tiles of codes >= floor(r * (T - 0.5)) + 1``: the codes
of every copy add, and the boundary sits half-way between the sums ``T - 1`` and ``T``. A tile of
a channel whose ``K`` rows are split into row tiles sees, at the boundary, its share of the sum in
proportion to its rows (``n_rows / K``); a trim without activation statistics has nothing better.

The strong competitor, per-chip fine-tuning of the thresholds, is :mod:`app.calibration.finetune`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from app.calibration.compensation.layout import place_routed, replicated_tiles
from app.calibration.signature import Signature
from hardware.chip import (
    ChipGeometry,
    ImageHeader,
    NetworkProgram,
    Tile,
    WeightImage,
    build_image,
    ideal_threshold_codes,
    strip_binary_weights,
)

F64 = NDArray[np.float64]


def replicated_image(
    program: NetworkProgram,
    geometry: ChipGeometry,
    header: ImageHeader,
    replicas: int,
    thresholds: dict[str, NDArray[np.int32]],
) -> WeightImage:
    """The model's weights in ``replicas`` copies (identity column routing) with ``thresholds``."""
    tiles = replicated_tiles(program, geometry, replicas)
    col_map = np.tile(np.arange(geometry.cols, dtype=np.int16), (geometry.n_macros, 1))
    image = WeightImage(
        header=header,
        geometry=geometry,
        program=strip_binary_weights(program),
        tiles=tiles,
        macros=place_routed(program, tiles, col_map, geometry),
        col_map=col_map,
        thresholds={k: np.asarray(v, dtype=np.int32) for k, v in thresholds.items()},
    )
    image.validate()
    return image


def _header(program: NetworkProgram, ecid: str, signature_hash: str, algorithm: str) -> ImageHeader:
    return ImageHeader(ecid, program.name, program.version, signature_hash, algorithm)


def boundary_thresholds(
    program: NetworkProgram,
    geometry: ChipGeometry,
    tiles: tuple[Tile, ...],
    gain: NDArray[np.floating],
    offset_code: NDArray[np.floating],
) -> dict[str, NDArray[np.int32]]:
    """Thresholds (per binary layer, (Cout,) int32) that put each channel's decision at the ideal
    boundary ``T - 0.5`` mapped through every tile's linear column model ``gain * sum + offset``.

    gain, offset_code : ndarray (n_macros, phys_cols): per physical bit line, the ratio and the
                        offset in ADC codes (column routing is the identity)
    """
    ideal = ideal_threshold_codes(program, geometry)
    expected: dict[str, F64] = {name: np.zeros(t.shape, np.float64) for name, t in ideal.items()}
    for t in tiles:
        layer = program.layer(t.layer)
        cols = slice(t.col_start, t.col_start + t.n_cols)
        share = (ideal[t.layer][cols].astype(np.float64) - 0.5) * t.n_rows / layer.n_rows
        expected[t.layer][cols] += (
            gain[t.macro, : t.n_cols].astype(np.float64) * share + offset_code[t.macro, : t.n_cols]
        )
    return {name: (np.floor(v) + 1).astype(np.int32) for name, v in expected.items()}


def uncalibrated_image(
    program: NetworkProgram, geometry: ChipGeometry, ecid: str = "", *, replicas: int = 1
) -> WeightImage:
    """The ideal image, as if the die had no variation (``replicas`` copies of every row tile)."""
    header = _header(program, ecid, "", "uncalibrated")
    if replicas == 1:
        return build_image(program, geometry, header)
    tiles = replicated_tiles(program, geometry, replicas)
    shape = (geometry.n_macros, geometry.phys_cols)
    thr = boundary_thresholds(program, geometry, tiles, np.ones(shape), np.zeros(shape))
    return replicated_image(program, geometry, header, replicas, thr)


def offset_only_image(
    program: NetworkProgram, signature: Signature, ecid: str = "", *, replicas: int = 1
) -> WeightImage:
    """Baseline A: the ideal boundary plus the measured column offsets of the channel's tiles."""
    g = signature.geometry
    tiles = replicated_tiles(program, g, replicas)
    offset = signature.offset_mac.astype(np.float64) / g.adc_lsb_mac
    thr = boundary_thresholds(program, g, tiles, np.ones(offset.shape), offset)
    header = _header(program, ecid, signature.sha256, "baseline-A-offset")
    return replicated_image(program, g, header, replicas, thr)


def two_point_trim(signature: Signature) -> tuple[F64, F64]:
    """Per bit line (n_macros, phys_cols): the measured gain and offset in codes, a dead bit line
    read as gain 0 and offset its stuck code."""
    g = signature.geometry
    dead = signature.dead_cols
    gain = np.where(dead, 0.0, signature.gain.astype(np.float64))
    offset = np.where(dead, signature.dead_code.astype(np.float64), signature.offset_mac / g.adc_lsb_mac)
    return gain, offset


def two_point_image(
    program: NetworkProgram, signature: Signature, ecid: str = "", *, replicas: int = 1
) -> WeightImage:
    """Baseline B: the standard two-point trim (gain and offset per column) of every tile."""
    g = signature.geometry
    tiles = replicated_tiles(program, g, replicas)
    gain, offset = two_point_trim(signature)
    thr = boundary_thresholds(program, g, tiles, gain, offset)
    header = _header(program, ecid, signature.sha256, "baseline-B-two-point")
    return replicated_image(program, g, header, replicas, thr)

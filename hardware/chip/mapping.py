"""Placement of a program's binary layers onto macros: tiles, weights per macro, ideal thresholds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hardware.chip.geometry import ChipError, ChipGeometry, NetworkProgram


# ------------------------------------------------------------------------------------------ placement
@dataclass(frozen=True)
class Tile:
    """One (row tile, column tile) of a binary layer, held by one macro."""

    layer: str
    row_tile: int
    col_tile: int
    macro: int
    row_start: int
    n_rows: int
    col_start: int
    n_cols: int

    def as_list(self) -> list[int | str]:
        return [
            self.layer,
            self.row_tile,
            self.col_tile,
            self.macro,
            self.row_start,
            self.n_rows,
            self.col_start,
            self.n_cols,
        ]

    @classmethod
    def from_list(cls, v: Sequence[Any]) -> Tile:
        name, *nums = v
        return cls(str(name), *(int(n) for n in nums))


def map_network(program: NetworkProgram, geometry: ChipGeometry) -> tuple[Tile, ...]:
    """Place every binary layer on macros, in layer order, one macro per (row tile, col tile)."""
    tiles: list[Tile] = []
    macro = 0
    for layer in program.binary_layers():
        k, n_out = layer.n_rows, layer.n_out
        for rt in range(math.ceil(k / geometry.rows)):
            for ct in range(math.ceil(n_out / geometry.cols)):
                r0, c0 = rt * geometry.rows, ct * geometry.cols
                tiles.append(
                    Tile(
                        layer.name,
                        rt,
                        ct,
                        macro,
                        r0,
                        min(geometry.rows, k - r0),
                        c0,
                        min(geometry.cols, n_out - c0),
                    )
                )
                macro += 1
    if macro > geometry.n_macros:
        raise ChipError(f"program {program.name} needs {macro} macros; the chip has {geometry.n_macros}")
    return tuple(tiles)


def place_weights(program: NetworkProgram, tiles: Sequence[Tile], geometry: ChipGeometry) -> NDArray[np.int8]:
    """Macro contents (n_macros, rows, phys_cols) int8 holding the program's weights; unused cells +1."""
    macros = np.ones((geometry.n_macros, geometry.rows, geometry.phys_cols), dtype=np.int8)
    mats = {layer.name: layer.weight_matrix() for layer in program.binary_layers()}
    for t in tiles:
        m = mats[t.layer]
        macros[t.macro, : t.n_rows, : t.n_cols] = m[
            t.row_start : t.row_start + t.n_rows, t.col_start : t.col_start + t.n_cols
        ]
    return macros


def ideal_threshold_codes(program: NetworkProgram, geometry: ChipGeometry) -> dict[str, NDArray[np.int32]]:
    """Per-layer integer thresholds in ADC codes for an ideal die: ceil(T_mac / lsb)."""
    return {
        layer.name: np.ceil(
            np.asarray(layer.arrays["threshold"], dtype=np.float64) / geometry.adc_lsb_mac
        ).astype(np.int32)
        for layer in program.binary_layers()
    }


def identity_col_map(geometry: ChipGeometry) -> NDArray[np.int16]:
    return np.tile(np.arange(geometry.cols, dtype=np.int16), (geometry.n_macros, 1))

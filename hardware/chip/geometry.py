"""Chip geometry, the layer kinds a die executes, and the network program (see :mod:`hardware.chip`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

LAYER_KINDS = (
    "conv_digital",
    "conv_binary",
    "maxpool",
    "avgpool_global",
    "flatten",
    "dense_binary",
    "dense_digital",
)
BINARY_KINDS = ("conv_binary", "dense_binary")


class ChipError(ValueError):
    """A program, placement or image does not fit the chip."""


# ------------------------------------------------------------------------------------------ geometry
@dataclass(frozen=True)
class ChipGeometry:
    """Physical layout of one CIM die.

    ``cols`` data bit lines plus ``spare_cols`` spares per macro (``phys_cols`` in all); a signed ADC
    of ``adc_bits`` per column whose LSB is ``adc_lsb_mac`` units of one cell's contribution.
    """

    n_macros: int = 32
    rows: int = 256
    cols: int = 64
    spare_cols: int = 4
    adc_bits: int = 6
    adc_lsb_mac: float = 1.0

    def __post_init__(self) -> None:
        for name in ("n_macros", "rows", "cols"):
            if getattr(self, name) <= 0:
                raise ChipError(f"geometry.{name} must be positive")
        if self.spare_cols < 0:
            raise ChipError("geometry.spare_cols must be >= 0")
        if not 1 <= self.adc_bits <= 12:
            raise ChipError("geometry.adc_bits must be in 1..12")
        if self.adc_lsb_mac <= 0:
            raise ChipError("geometry.adc_lsb_mac must be positive")

    @property
    def phys_cols(self) -> int:
        return self.cols + self.spare_cols

    @property
    def code_min(self) -> int:
        return -(2 ** (self.adc_bits - 1))

    @property
    def code_max(self) -> int:
        return 2 ** (self.adc_bits - 1) - 1

    @property
    def adc_levels(self) -> int:
        return 2**self.adc_bits

    def ideal_codes(self, analog_mac: NDArray[np.floating]) -> NDArray[np.int16]:
        """The ideal ADC: ``clip(round(v / lsb))`` for analog values in MAC units."""
        c = np.rint(np.asarray(analog_mac, dtype=np.float64) / self.adc_lsb_mac)
        return np.clip(c, self.code_min, self.code_max).astype(np.int16)

    def as_dict(self) -> dict[str, int | float]:
        return {
            "n_macros": self.n_macros,
            "rows": self.rows,
            "cols": self.cols,
            "spare_cols": self.spare_cols,
            "adc_bits": self.adc_bits,
            "adc_lsb_mac": self.adc_lsb_mac,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChipGeometry:
        try:
            return cls(
                n_macros=int(d["n_macros"]),
                rows=int(d["rows"]),
                cols=int(d["cols"]),
                spare_cols=int(d["spare_cols"]),
                adc_bits=int(d["adc_bits"]),
                adc_lsb_mac=float(d["adc_lsb_mac"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ChipError(f"bad geometry {dict(d)!r}: {e}") from e


# ------------------------------------------------------------------------------------ network program
@dataclass(frozen=True)
class LayerSpec:
    """One layer of a network program.

    ``attrs`` holds small JSON-able parameters; ``arrays`` the tensors:

    * ``conv_digital``: attrs ``stride, padding`` ([h, w]); arrays ``weight`` float32 (Cout, Cin, kh, kw),
      ``bias`` float32 (Cout,). Output {0,1} = step(conv + bias >= 0).
    * ``conv_binary``: attrs ``stride, padding, pool`` ([h, w]; pool [1, 1] = none), ``weight_shape``;
      arrays ``weight`` int8 (Cout, Cin, kh, kw) in {-1,+1}, ``threshold`` int32 (Cout,) in MAC units.
      Output channel j is 1 iff sum_i a_i w_ij >= threshold[j], then max-pooled.
    * ``dense_binary``: attrs ``weight_shape``; arrays ``weight`` int8 (out, in), ``threshold`` int32.
    * ``maxpool``: attrs ``kernel``; ``avgpool_global`` and ``flatten``: nothing.
    * ``dense_digital``: arrays ``weight`` float32 (out, in), ``bias`` float32 (out,): the logits.

    In a weight image the binary layers carry no ``weight`` (it lives in the macros) and their
    thresholds are per-die codes, kept in :class:`WeightImage`.
    """

    kind: str
    name: str
    attrs: Mapping[str, Any] = field(default_factory=dict)
    arrays: Mapping[str, NDArray[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ChipError(f"layer {self.name!r}: unknown kind {self.kind!r}")
        if self.kind in BINARY_KINDS and "weight_shape" not in self.attrs:
            raise ChipError(f"layer {self.name!r}: binary layers need attrs.weight_shape")

    @property
    def is_binary(self) -> bool:
        return self.kind in BINARY_KINDS

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.attrs["weight_shape"])

    @property
    def n_rows(self) -> int:
        """Bit-line rows the layer needs: the flattened kernel (binary layers only)."""
        return int(np.prod(self.weight_shape[1:]))

    @property
    def n_out(self) -> int:
        return self.weight_shape[0]

    def weight_matrix(self) -> NDArray[np.int8]:
        """The (K, Cout) matrix the bit lines see: rows in (Cin, kh, kw) order."""
        w = np.asarray(self.arrays["weight"], dtype=np.int8)
        return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)


@dataclass(frozen=True)
class NetworkProgram:
    """A binary network as the chip sees it (model-level: identical for every die)."""

    name: str
    version: str
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    layers: tuple[LayerSpec, ...]

    def binary_layers(self) -> list[LayerSpec]:
        return [layer for layer in self.layers if layer.is_binary]

    def layer(self, name: str) -> LayerSpec:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

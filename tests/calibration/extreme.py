"""A test-only driver whose bit lines have arbitrary, extreme transfer functions.

Per macro ``m`` and physical column ``p``, with ``dot = inputs @ weights[:, p]``::

    mode "linear"   code = clip(round(gain * dot + offset + noise))
    mode "saturate" code = clip(round(v_sat * tanh(gain * dot / v_sat) + offset + noise))
    mode "stuck"    code = stuck_code whatever the inputs
    mode "random"   code = uniform over the ADC range on every read

Gains may be 0 or negative, offsets far outside the ADC range: nothing of this is physical, it is
what a broken die or a third-party model at a wild corner may look like to characterization.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from hardware.chip import ChipGeometry
from hardware.driver import DieAddress, DieIdentity, Driver, ProtocolError

MODES = ("linear", "saturate", "stuck", "random")


@dataclass(frozen=True)
class ColumnTransfer:
    """Per-column transfer of every macro: arrays (n_macros, phys_cols); ``mode`` indexes MODES."""

    gain: NDArray[np.float64]
    offset_mac: NDArray[np.float64]
    mode: NDArray[np.int64]
    stuck_code: NDArray[np.int16]
    v_sat_mac: float = 6.0
    noise_mac: float = 0.5


class ExtremeDriver(Driver):
    """Single-site driver on one die with :class:`ColumnTransfer` bit lines (no network execution)."""

    name = "extreme"

    def __init__(self, geometry: ChipGeometry, transfer: ColumnTransfer, *, noise_seed: int = 0) -> None:
        super().__init__()
        self._geo = geometry
        self.transfer = transfer
        self._rng = np.random.default_rng(noise_seed)
        self._weights: dict[int, NDArray[np.float32]] = {}

    def _connect(self) -> None:
        return None

    def _close(self) -> None:
        self._weights = {}

    def _geometry_impl(self) -> ChipGeometry:
        return self._geo

    def _probe(self, address: DieAddress) -> DieIdentity:
        self._weights = {}
        return DieIdentity(address.lot_id, address.wafer, address.x, address.y, address.ecid)

    def _identify(self, site: int) -> DieIdentity:
        assert self._die is not None
        return self._die

    def _write_macro(self, macro: int, weights: NDArray[np.int8]) -> None:
        self._weights[macro] = weights.astype(np.float32)

    def _read_macro(self, macro: int, inputs: NDArray[np.uint8]) -> NDArray[np.int16]:
        g, t = self._geo, self.transfer
        w = self._weights.get(macro, np.ones((g.rows, g.phys_cols), np.float32))
        dot = (inputs.astype(np.float32) @ w).astype(np.float64)
        gain, off, mode = t.gain[macro], t.offset_mac[macro], t.mode[macro]
        noise = self._rng.standard_normal(dot.shape) * t.noise_mac
        lin = gain * dot
        sat = t.v_sat_mac * np.tanh(lin / t.v_sat_mac)
        v = np.where(mode == MODES.index("saturate"), sat, lin) + off + noise
        codes = np.clip(np.rint(v / g.adc_lsb_mac), g.code_min, g.code_max)
        codes = np.where(mode == MODES.index("stuck"), t.stuck_code[macro], codes)
        rand = self._rng.integers(g.code_min, g.code_max + 1, size=dot.shape)
        codes = np.where(mode == MODES.index("random"), rand, codes)
        return codes.astype(np.int16)

    def _program_image(self, image: bytes) -> int:
        raise ProtocolError("the extreme test driver runs no networks", protocol_code=0x7F)

    def _run_network(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        raise ProtocolError("the extreme test driver runs no networks", protocol_code=0x7F)

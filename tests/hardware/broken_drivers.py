"""Drivers that each break one rule of the contract, to prove the contract checks catch them.

Every one is the simulated driver with one defect, the kind a vendor's first driver has: a
``run_network`` that returns well-shaped zeros, a readout wired to the wrong bit lines, a driver
that forgets to account tester time. ``test_broken_drivers.py`` runs every contract check on each
and asserts that exactly the checks guarding the broken rule fail.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from hardware.chip import WeightImage, decode_image
from hardware.driver import DieAddress, DieIdentity, ProtocolError
from hardware.sim.driver import SimulatedDriver, SimulatedFleet


class IgnoresImage(SimulatedDriver):
    """(a) ``run_network`` returns zeros of the right shape whatever image is programmed."""

    def _run_network(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        super()._run_network(features[:1])  # still refuses to run without an image
        assert self._image is not None
        return np.zeros((features.shape[0], len(self._image.program.class_names)), np.float32)


class KeepsFirstImage(SimulatedDriver):
    """(a') the first image is programmed; later ones are checked and acknowledged but never written."""

    _first: WeightImage | None = None

    def _program_image(self, image: bytes) -> int:
        if self._first is None:
            n = super()._program_image(image)
            self._first = self._image
            return n
        try:
            used = decode_image(image).used_macros
        except ValueError as e:
            raise ProtocolError(f"die rejected the image: {e}", protocol_code=0x21) from e
        self._image = self._first
        return len(used)


class ConstantCodes(SimulatedDriver):
    """(b) ``read_macro`` returns mid-scale codes whatever was written and driven."""

    def _read_macro(self, macro: int, inputs: NDArray[np.uint8]) -> NDArray[np.int16]:
        super()._read_macro(macro, inputs)
        return np.zeros((inputs.shape[0], self._config.geometry.phys_cols), np.int16)


class SwappedColumns(SimulatedDriver):
    """(c) ``read_macro`` returns bit lines 1 and 2 swapped (a mis-wired readout)."""

    def _read_macro(self, macro: int, inputs: NDArray[np.uint8]) -> NDArray[np.int16]:
        codes = super()._read_macro(macro, inputs)
        return codes[:, [0, 2, 1, *range(3, codes.shape[1])]]


class NoTesterTime(SimulatedDriver):
    """(d) operations are counted but charge no tester seconds."""

    def _charge(self, seconds: float) -> None:
        return None


class IgnoresWrites(SimulatedDriver):
    """``write_macro`` is acknowledged but the macro keeps its power-up contents (all +1)."""

    def _write_macro(self, macro: int, weights: NDArray[np.int8]) -> None:
        self._image = None


class BroadcastsToFirstOnly(SimulatedDriver):
    """``write_macros`` writes its pattern into the first listed macro only (a broadcast enable mask
    that selects one macro)."""

    def _write_macros(self, macros: tuple[int, ...], weights: NDArray[np.int8]) -> None:
        super()._write_macros(macros[:1], weights)


class UnstableDie(SimulatedDriver):
    """Every probe of a die finds other variation (a driver that seeds from the probe count)."""

    _probes = 0

    def _probe(self, address: DieAddress) -> DieIdentity:
        self._probes += 1
        self.swap_fleet(SimulatedFleet(replace(self._config, seed=self._config.seed + self._probes)))
        return super()._probe(address)


class RunsWithoutImage(SimulatedDriver):
    """``run_network`` with no image programmed returns zeros instead of a ProtocolError."""

    def _run_network(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        if self._image is None:
            return np.zeros((features.shape[0], 2), np.float32)
        return super()._run_network(features)


class AcceptsCorruptImages(SimulatedDriver):
    """``program_image`` lets the decoder's ValueError out instead of the die's ProtocolError."""

    def _program_image(self, image: bytes) -> int:
        decode_image(image)
        return super()._program_image(image)


BROKEN: dict[type[SimulatedDriver], set[str]] = {
    IgnoresImage: {"run_network_executes_the_image"},
    KeepsFirstImage: {"run_network_executes_the_image"},
    ConstantCodes: {"read_follows_weights_and_inputs", "read_is_monotone", "write_macros"},
    SwappedColumns: {"read_follows_weights_and_inputs", "write_macros"},
    NoTesterTime: {"tester_time"},
    IgnoresWrites: {"read_follows_weights_and_inputs"},
    BroadcastsToFirstOnly: {"write_macros"},
    UnstableDie: {"die_is_stable"},
    RunsWithoutImage: {"protocol_errors"},
    AcceptsCorruptImages: {"protocol_errors"},
}
"""Each broken driver and the contract checks it must fail (and no others)."""

"""A simulated driver whose faults are scripted by call number, for the retry tests.

A scripted fault is raised *before* the simulator draws anything, so a retried call reads exactly
what the call would have read without the fault: a characterization that recovers from its faults
measures the same signature, byte for byte, as a clean one with the same seeds. A lost contact
behaves as the simulator's own: the die is no longer under the probe and its macros power up afresh
on the next probe.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from hardware.driver import ContactError, DieFault, HardwareTimeoutError
from hardware.sim.driver import SimulatedDriver

Fault = Literal["timeout", "contact", "die"]
Op = Literal["read_macro", "write_macro", "write_macros", "program_image", "run_network"]


class FlakyDriver(SimulatedDriver):
    """``faults[(op, n)]``: the fault of the ``n``-th call (1-based) of ``op``; ``from_call[op] = n``:
    every call of ``op`` from the ``n``-th on loses contact (the contact is really gone)."""

    def __init__(
        self,
        *,
        faults: dict[tuple[Op, int], Fault] | None = None,
        from_call: dict[Op, int] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.faults = dict(faults or {})
        self.from_call = dict(from_call or {})
        self.calls: Counter[str] = Counter()

    def _fault(self, op: Op) -> None:
        self.calls[op] += 1
        n = self.calls[op]
        fault = self.faults.get((op, n))
        if fault is None and op in self.from_call and n >= self.from_call[op]:
            fault = "contact"
        if fault == "timeout":
            raise HardwareTimeoutError(op, self.default_timeout_s, f"{op}: scripted timeout")
        if fault == "contact":
            self._die = None
            raise ContactError(f"{op}: scripted contact loss", op=op)
        if fault == "die":
            raise DieFault(f"{op}: scripted die fault", op=op)

    def _read_macro(self, macro: int, inputs: NDArray[np.uint8]) -> NDArray[np.int16]:
        self._fault("read_macro")
        return super()._read_macro(macro, inputs)

    def _write_macro(self, macro: int, weights: NDArray[np.int8]) -> None:
        self._fault("write_macro")
        super()._write_macro(macro, weights)

    def _write_macros(self, macros: tuple[int, ...], weights: NDArray[np.int8]) -> None:
        self._fault("write_macros")
        super()._write_macros(macros, weights)

    def _program_image(self, image: bytes) -> int:
        self._fault("program_image")
        return super()._program_image(image)

    def _run_network(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        self._fault("run_network")
        return super()._run_network(features)

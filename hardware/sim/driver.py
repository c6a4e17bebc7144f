"""The simulated tester: a seeded fleet of CIM dies behind the driver interface."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hardware.chip import ChipGeometry, WeightImage, decode_image, execute_network
from hardware.driver import (
    ContactError,
    DieAddress,
    DieFault,
    DieIdentity,
    Driver,
    DriverInfo,
    HardwareTimeoutError,
    ProtocolError,
    TimingModel,
)
from hardware.sim.corners import CORNERS, DEFAULT_CORNER, UnknownCornerError, corner_of, corner_variation
from hardware.sim.physics import MacroArray
from hardware.sim.variation import DieVariation, FaultConfig, VariationConfig, die_variation


@dataclass(frozen=True)
class FleetConfig:
    """Everything that defines a simulated fleet: its seed, geometry, variation and fault knobs."""

    seed: int = 2022
    geometry: ChipGeometry = field(default_factory=ChipGeometry)
    variation: VariationConfig = field(default_factory=VariationConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)


class SimulatedFleet:
    """Hands out die variations on demand, with a small LRU cache (the fleet is never all in memory).

    The variations are the simulator's hidden truth: only the driver (to simulate the physics) and
    ``hardware.sim.oracle`` (ORACLE, for tests and benchmarks) read them; there is no public getter.
    """

    def __init__(self, config: FleetConfig | None = None, *, cache_dies: int = 4) -> None:
        self.config = config or FleetConfig()
        self.__cache: OrderedDict[DieAddress, DieVariation] = OrderedDict()
        self.__cache_dies = max(0, cache_dies)

    def _hidden_die(self, address: DieAddress) -> DieVariation:
        """The hidden variation of one die: for the driver's physics and the oracle only."""
        hit = self.__cache.get(address)
        if hit is not None:
            self.__cache.move_to_end(address)
            return hit
        c = self.config
        truth = die_variation(c.seed, address, c.geometry, c.variation, c.faults)
        if self.__cache_dies:
            self.__cache[address] = truth
            while len(self.__cache) > self.__cache_dies:
                self.__cache.popitem(last=False)
        return truth


class SimulatedOptions(BaseModel):
    """The simulated driver's options (``CIMCAL_DRIVER_OPTIONS``, per-site options).

    ``p_timeout`` / ``p_contact_loss`` are per driver call, ``p_gross_defect`` per die; ``noise_seed``
    seeds the read-noise and fault draws (``None``: derived from the fleet seed and the site, so every
    site draws its own noise on the same fleet of dies). ``corner`` names the process corner
    (:data:`hardware.sim.corners.CORNERS`); ``variation_scale`` multiplies its static sigmas.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    fleet_seed: int = 2022
    corner: str = DEFAULT_CORNER
    variation_scale: float = Field(1.0, ge=0.0)
    p_timeout: float = Field(0.0, ge=0.0, le=1.0)
    p_contact_loss: float = Field(0.0, ge=0.0, le=1.0)
    p_gross_defect: float = Field(0.0, ge=0.0, le=1.0)
    noise_seed: int | None = None
    default_timeout_s: float = Field(30.0, gt=0.0)

    @field_validator("corner")
    @classmethod
    def _known_corner(cls, v: str) -> str:
        if v not in CORNERS:
            raise ValueError(str(UnknownCornerError(v)))
        return v


class SimulatedDriver(Driver):
    """A single-site tester on a simulated die fleet.

    Options (all keyword): ``fleet`` or (``fleet_seed``, ``corner``, ``variation_scale``, ``geometry``,
    ``p_timeout``, ``p_contact_loss``, ``p_gross_defect``), ``noise_seed`` for the read-noise and
    fault draws (default: ``fleet seed * 1009 + site``), ``timing`` and ``default_timeout_s``; the
    configurable ones are :class:`SimulatedOptions`. After a contact loss the die must be probed again.

    The fleet, the probed die's variation, the written arrays and the noise generator are private
    (name-mangled): nothing public on the driver leads to the simulator's hidden truth. The ORACLE
    (``hardware.sim.oracle``) is the one way to it, for tests and benchmarks.
    """

    name = "simulated"
    Options = SimulatedOptions
    broadcast_writes = True  # one shifted pattern latched into several macros (TimingModel.broadcast_macro_s)

    def __init__(
        self,
        *,
        fleet: SimulatedFleet | None = None,
        fleet_seed: int = 2022,
        corner: str = DEFAULT_CORNER,
        variation_scale: float = 1.0,
        geometry: ChipGeometry | None = None,
        p_timeout: float = 0.0,
        p_contact_loss: float = 0.0,
        p_gross_defect: float = 0.0,
        noise_seed: int | None = None,
        site: int = 0,
        resource: str | None = None,
        timing: TimingModel | None = None,
        default_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(site=site, resource=resource, timing=timing, default_timeout_s=default_timeout_s)
        if fleet is None:
            fleet = SimulatedFleet(
                FleetConfig(
                    seed=fleet_seed,
                    geometry=geometry or ChipGeometry(),
                    variation=corner_variation(corner, variation_scale),
                    faults=FaultConfig(p_timeout, p_contact_loss, p_gross_defect),
                )
            )
        self.__fleet = fleet
        self.__rng = np.random.default_rng(
            noise_seed if noise_seed is not None else fleet.config.seed * 1009 + site
        )
        self.__truth: DieVariation | None = None
        self.__arrays: dict[int, MacroArray] = {}
        self._image: WeightImage | None = None

    def swap_fleet(self, fleet: SimulatedFleet) -> None:
        """Draw later probes (and the fault knobs of every later call) from another simulated fleet.

        For fault-injection tests; the die under the probe stays as it is until the next probe.
        Returns nothing: the fleet it replaces (and its hidden truth) stays private.
        """
        self.__fleet = fleet

    @property
    def _config(self) -> FleetConfig:
        return self.__fleet.config

    def info(self) -> DriverInfo:
        c = self._config
        return DriverInfo(
            name=self.name,
            vendor="cimcal",
            model="simulated fleet",
            serial=f"seed-{c.seed}",
            extra={
                "corner": corner_of(c.variation),
                "variation_scale": f"{c.variation.variation_scale:g}",
            },
        )

    # ---- faults
    def _maybe_fault(self, op: str) -> None:
        f = self._config.faults
        if f.p_timeout and self.__rng.random() < f.p_timeout:
            raise HardwareTimeoutError(
                op, self.default_timeout_s, f"{op}: tester did not answer (injected timeout)"
            )
        if f.p_contact_loss and self.__rng.random() < f.p_contact_loss:
            self._die = None
            self.__truth = None
            raise ContactError(f"{op}: probe contact lost (injected); re-probe the die", op=op)

    # ---- driver implementation
    def _connect(self) -> None:
        return None

    def _close(self) -> None:
        self.__truth, self.__arrays, self._image = None, {}, None

    def _geometry_impl(self) -> ChipGeometry:
        return self._config.geometry

    def _probe(self, address: DieAddress) -> DieIdentity:
        self.__truth, self.__arrays, self._image = None, {}, None
        self._maybe_fault("probe")
        truth = self.__fleet._hidden_die(address)
        if truth.gross_defect:
            raise DieFault(f"die {address.ecid}: supply short at power-up (gross defect)", op="probe")
        self.__truth = truth
        return DieIdentity(address.lot_id, address.wafer, address.x, address.y, address.ecid)

    def _identify(self, site: int) -> DieIdentity:
        assert self._die is not None
        return self._die

    def _array(self, macro: int) -> MacroArray:
        arr = self.__arrays.get(macro)
        if arr is None:
            # Power-up contents of an unwritten macro: all +1.
            g = self._config.geometry
            arr = self._write(macro, np.ones((g.rows, g.phys_cols), dtype=np.int8))
        return arr

    def _write(self, macro: int, weights: NDArray[np.int8]) -> MacroArray:
        assert self.__truth is not None
        arr = MacroArray(self._config.geometry, self.__truth, macro, weights)
        self.__arrays[macro] = arr
        return arr

    def _write_macro(self, macro: int, weights: NDArray[np.int8]) -> None:
        self._maybe_fault("write_macro")
        self._image = None
        self._write(macro, weights)

    def _write_macros(self, macros: tuple[int, ...], weights: NDArray[np.int8]) -> None:
        self._maybe_fault("write_macros")
        self._image = None
        for m in macros:
            self._write(m, weights)

    def _read_macro(self, macro: int, inputs: NDArray[np.uint8]) -> NDArray[np.int16]:
        self._maybe_fault("read_macro")
        sigma = self._config.variation.sigma("read_noise_sigma_mac")
        return self._array(macro).read(inputs, sigma, self.__rng)

    def _program_image(self, image: bytes) -> int:
        self._maybe_fault("program_image")
        try:
            decoded = decode_image(image)
        except ValueError as e:
            raise ProtocolError(f"die rejected the image: {e}", protocol_code=0x21) from e
        if decoded.geometry != self._config.geometry:
            raise ProtocolError("image geometry does not match the die", protocol_code=0x22)
        assert self._die is not None
        if decoded.header.ecid not in ("", self._die.ecid):
            raise ProtocolError(
                f"image is for {decoded.header.ecid}, the die under the probe is {self._die.ecid}",
                protocol_code=0x23,
            )
        for m in decoded.used_macros:
            self._write(m, decoded.macros[m])
        self._image = decoded
        return len(decoded.used_macros)

    def _run_network(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        self._maybe_fault("run_network")
        if self._image is None:
            raise ProtocolError(
                "run_network: no image programmed since the last write/probe", protocol_code=0x31
            )
        sigma = self._config.variation.sigma("read_noise_sigma_mac")

        def readout(macro: int, inputs: NDArray[np.uint8]) -> NDArray[np.int16]:
            return self._array(macro).read(inputs, sigma, self.__rng)

        # The network's read noise comes from torch's sampler (3x numpy's on this path), seeded from
        # this driver's generator: still a pure function of the noise seed.
        noise = torch.Generator().manual_seed(int(self.__rng.integers(2**63)))

        def read_cols(macro: int, inputs: NDArray[np.uint8], cols: NDArray[np.int16]) -> NDArray[np.int16]:
            # The network reads only the bit lines the image maps: no product, noise or ADC for the rest.
            return self._array(macro).columns(cols).read(inputs, sigma, self.__rng, noise=noise)

        return execute_network(self._image, features, readout, read_cols=read_cols, cache_first_patches=True)

"""The simulated tester: a seeded fleet of CIM dies behind the driver interface."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
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
    """Hands out die variations on demand, with a small LRU cache (the fleet is never all in memory)."""

    def __init__(self, config: FleetConfig | None = None, *, cache_dies: int = 4) -> None:
        self.config = config or FleetConfig()
        self._cache: OrderedDict[DieAddress, DieVariation] = OrderedDict()
        self._cache_dies = max(0, cache_dies)

    def die(self, address: DieAddress) -> DieVariation:
        hit = self._cache.get(address)
        if hit is not None:
            self._cache.move_to_end(address)
            return hit
        c = self.config
        truth = die_variation(c.seed, address, c.geometry, c.variation, c.faults)
        if self._cache_dies:
            self._cache[address] = truth
            while len(self._cache) > self._cache_dies:
                self._cache.popitem(last=False)
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
    """

    name = "simulated"
    Options = SimulatedOptions

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
        self.fleet = fleet
        self._rng = np.random.default_rng(
            noise_seed if noise_seed is not None else fleet.config.seed * 1009 + site
        )
        self._truth: DieVariation | None = None
        self._arrays: dict[int, MacroArray] = {}
        self._image: WeightImage | None = None

    def info(self) -> DriverInfo:
        c = self.fleet.config
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
        f = self.fleet.config.faults
        if f.p_timeout and self._rng.random() < f.p_timeout:
            raise HardwareTimeoutError(
                op, self.default_timeout_s, f"{op}: tester did not answer (injected timeout)"
            )
        if f.p_contact_loss and self._rng.random() < f.p_contact_loss:
            self._die = None
            self._truth = None
            raise ContactError(f"{op}: probe contact lost (injected); re-probe the die", op=op)

    # ---- driver implementation
    def _connect(self) -> None:
        return None

    def _close(self) -> None:
        self._truth, self._arrays, self._image = None, {}, None

    def _geometry_impl(self) -> ChipGeometry:
        return self.fleet.config.geometry

    def _probe(self, address: DieAddress) -> DieIdentity:
        self._truth, self._arrays, self._image = None, {}, None
        self._maybe_fault("probe")
        truth = self.fleet.die(address)
        if truth.gross_defect:
            raise DieFault(f"die {address.ecid}: supply short at power-up (gross defect)", op="probe")
        self._truth = truth
        return DieIdentity(address.lot_id, address.wafer, address.x, address.y, address.ecid)

    def _identify(self, site: int) -> DieIdentity:
        assert self._die is not None
        return self._die

    def _array(self, macro: int) -> MacroArray:
        arr = self._arrays.get(macro)
        if arr is None:
            # Power-up contents of an unwritten macro: all +1.
            g = self.fleet.config.geometry
            arr = self._write(macro, np.ones((g.rows, g.phys_cols), dtype=np.int8))
        return arr

    def _write(self, macro: int, weights: NDArray[np.int8]) -> MacroArray:
        assert self._truth is not None
        arr = MacroArray(self.fleet.config.geometry, self._truth, macro, weights)
        self._arrays[macro] = arr
        return arr

    def _write_macro(self, macro: int, weights: NDArray[np.int8]) -> None:
        self._maybe_fault("write_macro")
        self._image = None
        self._write(macro, weights)

    def _read_macro(self, macro: int, inputs: NDArray[np.uint8]) -> NDArray[np.int16]:
        self._maybe_fault("read_macro")
        sigma = self.fleet.config.variation.sigma("read_noise_sigma_mac")
        return self._array(macro).read(inputs, sigma, self._rng)

    def _program_image(self, image: bytes) -> int:
        self._maybe_fault("program_image")
        try:
            decoded = decode_image(image)
        except ValueError as e:
            raise ProtocolError(f"die rejected the image: {e}", protocol_code=0x21) from e
        if decoded.geometry != self.fleet.config.geometry:
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
        sigma = self.fleet.config.variation.sigma("read_noise_sigma_mac")

        def readout(macro: int, inputs: NDArray[np.uint8]) -> NDArray[np.int16]:
            return self._array(macro).read(inputs, sigma, self._rng)

        return execute_network(self._image, features, readout)

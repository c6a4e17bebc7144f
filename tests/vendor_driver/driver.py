"""``VendorDriver``: a third party's tester driver as cimcal sees it, on its own simulated physics.

Written the way a vendor writes one: the protected methods of :class:`hardware.driver.Driver` only,
its own ``Options`` model, its own timing, its own protocol error codes. The dies behind it follow
:mod:`tests.vendor_driver.physics` (bit-line saturation, IR drop, a bowed ADC), not the built-in
simulator.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from hardware.chip import ChipGeometry, WeightImage, decode_image, execute_network
from hardware.driver import DieAddress, DieIdentity, Driver, DriverInfo, ProtocolError, TimingModel
from tests.vendor_driver.physics import VendorDie, VendorMacro, vendor_die

VENDOR_TIMING = TimingModel(
    probe_s=0.4,
    write_macro_s=3.5e-3,
    read_call_s=120e-6,
    read_vector_s=1.6e-6,
    program_setup_s=8e-3,
    inference_vector_s=30e-6,
    inference_call_s=2e-3,
)


class VendorOptions(BaseModel):
    """Options of the vendor's tester (``CIMCAL_DRIVER_OPTIONS``, ``CIMCAL_CONTRACT_OPTIONS``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 7
    corner: float = Field(1.0, ge=0.0, description="multiplies every die-to-die sigma of the process")
    v_sat_mac: float = Field(24.0, gt=0.0, description="bit-line saturation level, MAC units")
    ir_drop: float = Field(0.2, ge=0.0, lt=1.0, description="gain lost with every word line active")
    read_noise_mac: float = Field(0.8, ge=0.0)
    noise_seed: int | None = None
    default_timeout_s: float = Field(30.0, gt=0.0)


class VendorDriver(Driver):
    """A single-site tester of the (fictional) ACME-CIM-9 family."""

    name = "vendor"
    version = "0.1.0"
    Options = VendorOptions

    def __init__(
        self,
        *,
        seed: int = 7,
        corner: float = 1.0,
        v_sat_mac: float = 24.0,
        ir_drop: float = 0.2,
        read_noise_mac: float = 0.8,
        noise_seed: int | None = None,
        site: int = 0,
        resource: str | None = None,
        default_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(
            site=site, resource=resource, timing=VENDOR_TIMING, default_timeout_s=default_timeout_s
        )
        self.seed, self.corner = seed, corner
        self.v_sat_mac, self.ir_drop, self.read_noise_mac = v_sat_mac, ir_drop, read_noise_mac
        self._rng = np.random.default_rng([seed, 31337, site] if noise_seed is None else noise_seed)
        self._dies: OrderedDict[DieAddress, VendorDie] = OrderedDict()
        self._die_truth: VendorDie | None = None
        self._macros: dict[int, VendorMacro] = {}
        self._image: WeightImage | None = None
        self._geo = ChipGeometry()

    def info(self) -> DriverInfo:
        return DriverInfo(
            name=self.name,
            vendor="ACME Test Systems (cimcal test double)",
            model="ACME-CIM-9",
            serial=f"A9-{self.seed:04d}-{self.site}",
            extra={
                "corner": f"{self.corner:g}",
                "v_sat_mac": f"{self.v_sat_mac:g}",
                "ir_drop": f"{self.ir_drop:g}",
            },
        )

    def _connect(self) -> None:
        return None

    def _close(self) -> None:
        self._die_truth, self._macros, self._image = None, {}, None

    def _geometry_impl(self) -> ChipGeometry:
        return self._geo

    def _probe(self, address: DieAddress) -> DieIdentity:
        self._die_truth, self._macros, self._image = None, {}, None
        die = self._dies.get(address)
        if die is None:
            die = vendor_die(self.seed, address, self._geo, self.corner)
            self._dies[address] = die
            while len(self._dies) > 2:
                self._dies.popitem(last=False)
        self._die_truth = die
        return DieIdentity(address.lot_id, address.wafer, address.x, address.y, address.ecid)

    def _identify(self, site: int) -> DieIdentity:
        assert self._die is not None
        return self._die

    def _macro(self, m: int) -> VendorMacro:
        mac = self._macros.get(m)
        if mac is None:  # never written: the macro powers up all -1 on this family
            mac = self._write(m, -np.ones((self._geo.rows, self._geo.phys_cols), np.int8))
        return mac

    def _write(self, m: int, weights: NDArray[np.int8]) -> VendorMacro:
        assert self._die_truth is not None
        mac = VendorMacro(self._geo, self._die_truth, m, weights)
        self._macros[m] = mac
        return mac

    def _write_macro(self, macro: int, weights: NDArray[np.int8]) -> None:
        self._image = None
        self._write(macro, weights)

    def _read(self, macro: int, inputs: NDArray[np.uint8]) -> NDArray[np.int16]:
        return self._macro(macro).read(
            inputs,
            v_sat_mac=self.v_sat_mac,
            ir_drop=self.ir_drop,
            noise_mac=self.read_noise_mac,
            rng=self._rng,
        )

    def _read_macro(self, macro: int, inputs: NDArray[np.uint8]) -> NDArray[np.int16]:
        return self._read(macro, inputs)

    def _program_image(self, image: bytes) -> int:
        try:
            decoded = decode_image(image)
        except ValueError as e:
            raise ProtocolError(f"ACME: image refused ({e})", protocol_code=0x4101) from e
        if decoded.geometry != self._geo:
            raise ProtocolError("ACME: image built for another die geometry", protocol_code=0x4102)
        assert self._die is not None
        if decoded.header.ecid not in ("", self._die.ecid):
            raise ProtocolError(
                f"ACME: image for {decoded.header.ecid}, probed {self._die.ecid}", protocol_code=0x4103
            )
        for m in decoded.used_macros:
            self._write(m, decoded.macros[m])
        self._image = decoded
        return len(decoded.used_macros)

    def _run_network(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        if self._image is None:
            raise ProtocolError(
                "ACME: no network loaded since the last probe or macro write", protocol_code=0x4201
            )
        return execute_network(self._image, features, self._read)

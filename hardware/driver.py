"""The driver interface every tester driver implements.

The public methods validate their arguments, enforce the timeout, log, account tester time and then
call a protected ``_method`` that a concrete driver implements (the pymeasure / ophyd-async shape).
A driver talks to one die at a time: the die under the probe, chosen with :meth:`Driver.probe`.
"""

from __future__ import annotations

import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from hardware.chip import ChipGeometry

log = logging.getLogger(__name__)

T = TypeVar("T")

_LOT_RE = re.compile(r"^[A-Z0-9][A-Z0-9_.]{0,31}$")
_ECID_RE = re.compile(
    r"^(?P<lot>[A-Z0-9][A-Z0-9_.]{0,31})-W(?P<wafer>\d{2})-X(?P<x>[+-]\d{3})Y(?P<y>[+-]\d{3})$"
)


# --------------------------------------------------------------------------------------------- errors
class HardwareError(Exception):
    """Base of every error a driver raises. ``code`` is a stable machine-readable string."""

    code = "hardware_error"

    def __init__(self, message: str, *, op: str | None = None) -> None:
        super().__init__(message)
        self.op = op


class NotConnectedError(HardwareError):
    code = "not_connected"


class HardwareTimeoutError(HardwareError):
    code = "hardware_timeout"

    def __init__(self, op: str, timeout_s: float, message: str | None = None) -> None:
        super().__init__(message or f"{op} did not complete within {timeout_s:g} s", op=op)
        self.timeout_s = timeout_s


class ContactError(HardwareError):
    """The probe lost contact with the die (transient: re-seat and retry)."""

    code = "contact_lost"


class ProtocolError(HardwareError):
    code = "protocol_error"

    def __init__(self, message: str, *, protocol_code: int = 0, op: str | None = None) -> None:
        super().__init__(message, op=op)
        self.protocol_code = protocol_code


class DieFault(HardwareError):
    """The die itself is bad (shorts, no response): not transient, the die fails."""

    code = "die_fault"


TRANSIENT_ERRORS: tuple[type[HardwareError], ...] = (HardwareTimeoutError, ContactError)


# ------------------------------------------------------------------------------------------- identity
@dataclass(frozen=True, order=True)
class DieAddress:
    """Where a die sits: lot, wafer number (1-99) and die coordinates on the wafer grid (|x|,|y| <= 999).

    The ECID is ``{lot}-W{wafer:02d}-X{x:+04d}Y{y:+04d}``, e.g. ``LOT0001-W03-X+012Y-004``; it is
    derived from the address and parses back to it (:meth:`from_ecid`).
    """

    lot_id: str
    wafer: int
    x: int
    y: int

    def __post_init__(self) -> None:
        if not _LOT_RE.match(self.lot_id):
            raise ValueError(f"lot id {self.lot_id!r}: 1-32 of A-Z, 0-9, '_' or '.', starting alphanumeric")
        if not 1 <= self.wafer <= 99:
            raise ValueError(f"wafer number {self.wafer} outside 1..99")
        if abs(self.x) > 999 or abs(self.y) > 999:
            raise ValueError(f"die coordinates ({self.x}, {self.y}) outside -999..999")

    @property
    def ecid(self) -> str:
        return f"{self.lot_id}-W{self.wafer:02d}-X{self.x:+04d}Y{self.y:+04d}"

    @classmethod
    def from_ecid(cls, ecid: str) -> DieAddress:
        m = _ECID_RE.match(ecid)
        if m is None:
            raise ValueError(f"malformed ECID {ecid!r}; expected LOT-Wnn-X+xxxY+yyy")
        return cls(m["lot"], int(m["wafer"]), int(m["x"]), int(m["y"]))


@dataclass(frozen=True)
class DieIdentity:
    """What the die under the probe reports about itself."""

    lot_id: str
    wafer: int
    x: int
    y: int
    ecid: str

    @property
    def address(self) -> DieAddress:
        return DieAddress(self.lot_id, self.wafer, self.x, self.y)


# ---------------------------------------------------------------------------------------- timing model
@dataclass(frozen=True)
class TimingModel:
    """Tester seconds charged per operation (defaults are those of a mid-range memory tester).

    A macro write shifts ``rows x phys_cols`` bits through a serial port (~2 ms); a broadcast write
    (:meth:`Driver.write_macros` on a tester that has one) shifts the pattern once and latches it into
    every selected macro, ``broadcast_macro_s`` per further macro; a read call pays a set-up overhead
    plus ``read_vector_s`` per input vector (a 1 MHz word-line drive); programming an image pays per
    written macro plus a set-up; an inference pays per input vector.
    """

    probe_s: float = 0.25
    write_macro_s: float = 2.0e-3
    broadcast_macro_s: float = 50e-6
    read_call_s: float = 50e-6
    read_vector_s: float = 1.0e-6
    program_setup_s: float = 5.0e-3
    inference_vector_s: float = 20e-6
    inference_call_s: float = 1.0e-3

    def write_macros_s(self, n_macros: int, *, broadcast: bool) -> float:
        """Tester seconds of writing one pattern into ``n_macros`` macros: one shift and a latch per
        further macro on a broadcasting tester, ``n_macros`` full writes on one without."""
        if broadcast:
            return self.write_macro_s + self.broadcast_macro_s * max(n_macros - 1, 0)
        return self.write_macro_s * n_macros


@dataclass
class OpCounters:
    """Counts of every operation since the last :meth:`Driver.reset_counters`."""

    probes: int = 0
    macro_writes: int = 0  # macros written (a broadcast write counts every macro it writes)
    write_calls: int = 0  # write operations (write_macro or write_macros calls)
    read_calls: int = 0
    read_vectors: int = 0
    image_programs: int = 0
    inference_vectors: int = 0
    tester_time_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


# ------------------------------------------------------------------------------------------ the driver
@dataclass
class DriverInfo:
    name: str
    vendor: str = "unknown"
    model: str = "unknown"
    serial: str = "unknown"
    extra: dict[str, str] = field(default_factory=dict)


class NoOptions(BaseModel):
    """The options of a driver that takes none: any key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Driver(ABC):
    """Abstract tester driver. Subclasses implement the ``_``-prefixed methods only.

    Class attributes a driver declares:

    * ``name``: the name it is registered under (its ``cimcal.drivers`` entry point must have the
      same name) and recorded with every measurement;
    * ``version``: recorded with every measurement; ``None`` (default) means the version of the
      distribution that registers the driver;
    * ``Options``: a pydantic model of its configuration (``CIMCAL_DRIVER_OPTIONS``, per-site options),
      validated before the driver is built; :class:`NoOptions` by default. Fields of type
      ``SecretStr`` are masked wherever the configuration is shown.

    ``site`` is the station's test-site index the driver serves and ``resource`` the address of its
    tester (``"TCPIP0::10.0.0.5::INSTR"``, ``"host:port"``; ``None`` for a driver that needs none).
    """

    name: ClassVar[str] = "abstract"
    version: ClassVar[str | None] = None
    Options: ClassVar[type[BaseModel]] = NoOptions
    broadcast_writes: ClassVar[bool] = False
    """True where the tester writes one pattern into several macros in one operation: the driver then
    implements :meth:`_write_macros` and is charged :meth:`TimingModel.write_macros_s` with broadcast."""

    def __init__(
        self,
        *,
        site: int = 0,
        resource: str | None = None,
        timing: TimingModel | None = None,
        default_timeout_s: float = 30.0,
    ) -> None:
        if default_timeout_s <= 0:
            raise ValueError("default_timeout_s must be positive")
        if site < 0:
            raise ValueError("site must be >= 0")
        self.site = site
        self.resource = resource
        self.timing = timing or TimingModel()
        self.default_timeout_s = default_timeout_s
        self.counters = OpCounters()
        self._connected = False
        self._die: DieIdentity | None = None
        self._geometry: ChipGeometry | None = None

    @classmethod
    def from_options(cls, options: BaseModel, *, site: int = 0, resource: str | None = None) -> Self:
        """A driver built from its validated ``Options``: by default every option is passed to the
        constructor as a keyword argument of the same name (override to map them otherwise)."""
        kwargs: dict[str, Any] = {k: getattr(options, k) for k in type(options).model_fields}
        return cls(site=site, resource=resource, **kwargs)

    # ---- lifecycle
    def connect(self, timeout_s: float | None = None) -> Self:
        if self._connected:
            return self
        self._call("connect", timeout_s, self._connect)
        self._connected = True
        self._geometry = self._geometry_impl()
        log.info("driver %s connected", self.name)
        return self

    def close(self) -> None:
        if self._connected:
            try:
                self._close()
            finally:
                self._connected = False
                self._die = None
                log.info("driver %s closed", self.name)

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def tester_time_s(self) -> float:
        return self.counters.tester_time_s

    def reset_counters(self) -> OpCounters:
        """Start a new accounting window; returns the counters of the window that ended."""
        old, self.counters = self.counters, OpCounters()
        return old

    def info(self) -> DriverInfo:
        """What the tester says it is (vendor, model, serial); the station records it with every
        measurement. Called once after each connect."""
        return DriverInfo(name=self.name)

    # ---- operations
    def probe(self, address: DieAddress, timeout_s: float | None = None) -> DieIdentity:
        """Step the prober to ``address`` and make contact; returns the identity the die reports."""
        self._require_connected("probe")
        self._die = None
        ident = self._call("probe", timeout_s, lambda: self._probe(address))
        self.counters.probes += 1
        self._charge(self.timing.probe_s)
        self._die = ident
        return ident

    def identify(self, site: int = 0, timeout_s: float | None = None) -> DieIdentity:
        """The identity of the die under probe ``site`` (single-site drivers accept site 0 only)."""
        self._require_die("identify")
        if site != 0:
            raise ValueError(f"site {site}: {self.name} is a single-site driver")
        return self._call("identify", timeout_s, lambda: self._identify(site))

    def geometry(self) -> ChipGeometry:
        self._require_connected("geometry")
        assert self._geometry is not None
        return self._geometry

    def write_macro(self, macro: int, weights: NDArray[np.int8], timeout_s: float | None = None) -> None:
        """Write ``weights`` int8 (rows, phys_cols) in {-1,+1} into macro ``macro``."""
        geo = self._require_die("write_macro")
        self._check_macro(geo, macro)
        w = self._check_weights(geo, weights)
        self._call("write_macro", timeout_s, lambda: self._write_macro(macro, w))
        self.counters.macro_writes += 1
        self.counters.write_calls += 1
        self._charge(self.timing.write_macro_s)

    def write_macros(
        self, macros: Sequence[int], weights: NDArray[np.int8], timeout_s: float | None = None
    ) -> None:
        """Write one pattern ``weights`` int8 (rows, phys_cols) in {-1,+1} into every macro of ``macros``
        (distinct, at least one), in one operation where the tester broadcasts (``broadcast_writes``),
        else one macro write after another. Either way every listed macro holds the pattern afterwards
        and ``counters.macro_writes`` grows by ``len(macros)``."""
        geo = self._require_die("write_macros")
        ms = tuple(int(m) for m in macros)
        if not ms:
            raise ValueError("write_macros needs at least one macro")
        if len(set(ms)) != len(ms):
            raise ValueError(f"write_macros: macros {list(ms)} repeat a macro")
        for m in ms:
            self._check_macro(geo, m)
        w = self._check_weights(geo, weights)
        self._call("write_macros", timeout_s, lambda: self._write_macros(ms, w))
        self.counters.macro_writes += len(ms)
        self.counters.write_calls += 1
        self._charge(self.timing.write_macros_s(len(ms), broadcast=self.broadcast_writes))

    def read_macro(
        self, macro: int, inputs: NDArray[np.integer] | NDArray[np.bool_], timeout_s: float | None = None
    ) -> NDArray[np.int16]:
        """Drive ``inputs`` (N, rows) in {0,1} on the word lines; returns ADC codes int16 (N, phys_cols)."""
        geo = self._require_die("read_macro")
        self._check_macro(geo, macro)
        a = np.asarray(inputs)
        if a.ndim != 2 or a.shape[1] != geo.rows:
            raise ValueError(f"inputs shape {a.shape}, expected (N, {geo.rows})")
        if a.dtype != np.bool_ and not np.all((a == 0) | (a == 1)):
            raise ValueError("inputs must be 0 or 1")
        a8 = a.astype(np.uint8, copy=False)
        codes = self._call("read_macro", timeout_s, lambda: self._read_macro(macro, a8))
        self.counters.read_calls += 1
        self.counters.read_vectors += a.shape[0]
        self._charge(self.timing.read_call_s + self.timing.read_vector_s * a.shape[0])
        return codes

    def program_image(self, image: bytes, timeout_s: float | None = None) -> None:
        """Program a weight image (see :mod:`hardware.chip`) into the die under the probe."""
        self._require_die("program_image")
        if not isinstance(image, bytes | bytearray | memoryview):
            raise TypeError("image must be bytes")
        n_written = self._call("program_image", timeout_s, lambda: self._program_image(bytes(image)))
        self.counters.image_programs += 1
        self._charge(self.timing.program_setup_s + self.timing.write_macro_s * n_written)

    def run_network(
        self, features: NDArray[np.float32], timeout_s: float | None = None
    ) -> NDArray[np.float32]:
        """Run the programmed network on ``features`` float32 (N, ...); returns logits (N, n_classes)."""
        self._require_die("run_network")
        x = np.asarray(features, dtype=np.float32)
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"features shape {x.shape}: expected a non-empty batch (N, ...)")
        logits = self._call("run_network", timeout_s, lambda: self._run_network(x))
        self.counters.inference_vectors += x.shape[0]
        self._charge(self.timing.inference_call_s + self.timing.inference_vector_s * x.shape[0])
        return logits

    # ---- for subclasses
    @abstractmethod
    def _connect(self) -> None: ...

    @abstractmethod
    def _close(self) -> None: ...

    @abstractmethod
    def _geometry_impl(self) -> ChipGeometry: ...

    @abstractmethod
    def _probe(self, address: DieAddress) -> DieIdentity: ...

    @abstractmethod
    def _identify(self, site: int) -> DieIdentity: ...

    @abstractmethod
    def _write_macro(self, macro: int, weights: NDArray[np.int8]) -> None: ...

    def _write_macros(self, macros: tuple[int, ...], weights: NDArray[np.int8]) -> None:
        """Write one pattern into several macros. Default (a tester without broadcast writes): one
        :meth:`_write_macro` per macro; a broadcasting driver overrides it and sets ``broadcast_writes``."""
        for m in macros:
            self._write_macro(m, weights)

    @abstractmethod
    def _read_macro(self, macro: int, inputs: NDArray[np.uint8]) -> NDArray[np.int16]: ...

    @abstractmethod
    def _program_image(self, image: bytes) -> int:
        """Program the image; returns the number of macros written (for tester-time accounting)."""

    @abstractmethod
    def _run_network(self, features: NDArray[np.float32]) -> NDArray[np.float32]: ...

    # ---- helpers
    def _require_connected(self, op: str) -> None:
        if not self._connected:
            raise NotConnectedError(f"{op}: driver {self.name} is not connected", op=op)

    def _require_die(self, op: str) -> ChipGeometry:
        self._require_connected(op)
        if self._die is None:
            raise NotConnectedError(f"{op}: no die under the probe (call probe() first)", op=op)
        assert self._geometry is not None
        return self._geometry

    @staticmethod
    def _check_weights(geo: ChipGeometry, weights: NDArray[np.int8]) -> NDArray[np.int8]:
        w = np.asarray(weights)
        if w.shape != (geo.rows, geo.phys_cols):
            raise ValueError(f"weights shape {w.shape}, expected ({geo.rows}, {geo.phys_cols})")
        if not np.all((w == 1) | (w == -1)):
            raise ValueError("weights must be -1 or +1")
        return w.astype(np.int8, copy=False)

    @staticmethod
    def _check_macro(geo: ChipGeometry, macro: int) -> None:
        if not 0 <= int(macro) < geo.n_macros:
            raise ValueError(f"macro {macro} outside 0..{geo.n_macros - 1}")

    def _charge(self, seconds: float) -> None:
        self.counters.tester_time_s += seconds

    def _call(self, op: str, timeout_s: float | None, fn: Callable[[], T]) -> T:
        """Run one operation under its timeout; a driver that overruns raises HardwareTimeoutError."""
        limit = self.default_timeout_s if timeout_s is None else timeout_s
        if limit <= 0:
            raise ValueError("timeout_s must be positive")
        t0 = time.perf_counter()
        try:
            result = fn()
        except HardwareError as e:
            if e.op is None:
                e.op = op
            log.warning("driver %s: %s failed: %s", self.name, op, e)
            raise
        elapsed = time.perf_counter() - t0
        if elapsed > limit:
            raise HardwareTimeoutError(op, limit)
        log.debug("driver %s: %s took %.3f ms", self.name, op, elapsed * 1e3)
        return result

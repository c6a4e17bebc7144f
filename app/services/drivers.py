"""The registered drivers, and a bring-up check of one driver against its tester (``cimcal drivers``).

The check builds the driver as the station would for one site (the configured options with any given
over them), connects, asks the tester who it is, reads the geometry, probes a die and does one
write/read round trip of a known pattern: all-+1 then all--1 weights read with the same ``k`` active
word lines, whose ideal inner products are ``+k`` and ``-k``; the median code difference over the
columns must be within half of ``2k / adc_lsb_mac`` either way (a sign, scale or wiring fault fails;
an ADC of fewer than 3 bits is checked for the sign only).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from app.config import Settings
from app.services.hardware import TesterSite, site_spec
from hardware.chip import ChipGeometry
from hardware.driver import DieAddress, Driver
from hardware.registry import broken_drivers, driver_entries, options_schema, public_options

T = TypeVar("T")

CHECK_DIE = "CHECK-W01-X+000Y+000"
ROUND_TRIP_ROWS = 16
ROUND_TRIP_REPEATS = 8


@dataclass(frozen=True)
class DriverListing:
    name: str
    version: str
    source: str
    options_schema: dict[str, Any]


def registered_drivers() -> tuple[list[DriverListing], dict[str, str]]:
    """(every registered driver with its options schema, {broken plugin: why})."""
    listed = [DriverListing(e.name, e.version, e.source, options_schema(e.name)) for e in driver_entries()]
    return listed, broken_drivers()


@dataclass(frozen=True)
class CheckStep:
    """One step of a check: passed or not, host seconds, what it found (or why it failed)."""

    name: str
    ok: bool
    wall_s: float
    detail: str


@dataclass
class CheckReport:
    driver: str
    site: int
    resource: str | None = None
    version: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    steps: list[CheckStep] = field(default_factory=list)
    tester_s: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)


class _Failed(Exception):
    pass


def _step(report: CheckReport, name: str, fn: Callable[[], T], describe: Callable[[T], str]) -> T:
    """Run one step, timed; a failure is recorded and ends the check."""
    t0 = time.perf_counter()
    try:
        value = fn()
        detail = describe(value)
    except Exception as e:  # a bring-up check reports every failure, whatever raised it
        report.steps.append(CheckStep(name, False, time.perf_counter() - t0, f"{type(e).__name__}: {e}"))
        raise _Failed from e
    report.steps.append(CheckStep(name, True, time.perf_counter() - t0, detail))
    return value


def _describe_geometry(g: ChipGeometry) -> str:
    return (
        f"{g.n_macros} macros of {g.rows} x {g.cols}+{g.spare_cols} cells, "
        f"{g.adc_bits}-bit ADC, codes {g.code_min}..{g.code_max}"
    )


def _round_trip(driver: Driver) -> str:
    """Write +1 then -1 weights into macro 0, read both with the same active rows; what it found."""
    g = driver.geometry()
    # Keep the ideal sums +-k well inside the ADC range.
    k = max(1, min(ROUND_TRIP_ROWS, g.rows, int(g.code_max * g.adc_lsb_mac / 2)))
    x = np.zeros((ROUND_TRIP_REPEATS, g.rows), dtype=np.uint8)
    x[:, :k] = 1
    means = []
    for sign in (1, -1):
        driver.write_macro(0, np.full((g.rows, g.phys_cols), sign, dtype=np.int8))
        codes = driver.read_macro(0, x)
        if codes.shape != (ROUND_TRIP_REPEATS, g.phys_cols) or codes.dtype != np.int16:
            raise AssertionError(
                f"read returned {codes.dtype} {codes.shape}, expected int16 {x.shape[0], g.phys_cols}"
            )
        if codes.min() < g.code_min or codes.max() > g.code_max:
            raise AssertionError(f"codes {codes.min()}..{codes.max()} outside {g.code_min}..{g.code_max}")
        means.append(codes.astype(np.float64).mean(axis=0))
    expected = 2 * k / g.adc_lsb_mac
    measured = float(np.median(means[0] - means[1]))
    detail = f"{k} rows, +1 vs -1 weights: median code step {measured:.2f}, ideal {expected:.2f}"
    # A sense amplifier or a 2-bit ADC only tells the sign; a wider ADC must also get the scale.
    low, high = (1e-9, np.inf) if g.adc_bits < 3 else (0.5 * expected, 1.5 * expected)
    if not low <= measured <= high:
        raise AssertionError(f"{detail}: outside {low:.2f}..{high:.2f}")
    return detail


def check_driver(
    settings: Settings,
    name: str,
    *,
    options: Mapping[str, Any] | None = None,
    site: int = 0,
    resource: str | None = None,
    die: str = CHECK_DIE,
) -> CheckReport:
    """Bring-up check of driver ``name`` on test site ``site`` (see the module docstring)."""
    report = CheckReport(driver=name, site=site, resource=resource)
    tester: TesterSite | None = None
    try:
        spec = _step(
            report,
            "options",
            lambda: site_spec(settings, site, driver=name, options=options, resource=resource),
            lambda sp: f"valid, sha256 {sp.options_sha256[:16]}...",
        )
        report.resource, report.options = spec.resource, public_options(spec.options)
        tester = _step(
            report, "build", lambda: TesterSite.build(name, spec), lambda t: f"version {t.driver_version}"
        )
        report.version = tester.driver_version
        drv = tester.driver
        _step(report, "connect", drv.connect, lambda _: "connected")
        _step(report, "info", drv.info, lambda i: f"{i.vendor} {i.model}, serial {i.serial}")
        _step(report, "geometry", drv.geometry, _describe_geometry)
        address = DieAddress.from_ecid(die)
        _step(report, "probe", lambda: drv.probe(address), lambda i: f"die {i.ecid}")
        _step(report, "identify", drv.identify, lambda i: f"die {i.ecid}")
        _step(report, "write/read", lambda: _round_trip(drv), lambda detail: detail)
    except _Failed:
        pass
    finally:
        if tester is not None:
            report.tester_s = tester.driver.tester_time_s
            tester.driver.close()
    return report

"""The station's testers: one driver per test site, built from settings, lent out by a pool, checked by
/readyz, and described by their provenance.

A driver serves one die at a time. Requests and batch workers borrow a site from the pool for the
whole sequence probe -> operations, so two requests never interleave on one tester; with
``CIMCAL_TEST_SITES=N`` (or N sites in ``CIMCAL_SITES``) the station runs N dies at once.

A site's driver options are merged, later over earlier: the simulated fleet's settings
(``CIMCAL_FLEET_SEED``, ``CIMCAL_CORNER``, ``CIMCAL_P_TIMEOUT``, ... ; the simulated driver only), ``CIMCAL_DRIVER_OPTIONS``,
then the site's own ``options``; the result is validated by the driver's ``Options`` model.
"""

from __future__ import annotations

import logging
import queue
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from app.config import Settings
from app.errors import AppError, UnavailableError
from hardware.driver import Driver, HardwareError
from hardware.registry import (
    DriverOptionsError,
    UnknownDriverError,
    create_driver,
    driver_version,
    options_sha256,
    public_options,
    validate_options,
)

log = logging.getLogger(__name__)


class StationConfigError(AppError):
    """The station's hardware configuration is unusable (unknown driver, options its model refuses)."""

    status_code = 500
    code = "station_misconfigured"


@dataclass(frozen=True)
class SiteSpec:
    """One test site as configured: its index, its tester's resource and its validated options."""

    index: int
    resource: str | None
    options: BaseModel = field(repr=False)
    options_sha256: str

    def public(self) -> dict[str, Any]:
        """For display: the options with every secret masked."""
        return {
            "site": self.index,
            "resource": self.resource,
            "options": public_options(self.options),
            "options_sha256": self.options_sha256,
        }


def _simulated_defaults(settings: Settings) -> dict[str, Any]:
    return {
        "fleet_seed": settings.fleet_seed,
        "corner": settings.corner,
        "variation_scale": settings.variation_scale,
        "p_timeout": settings.p_timeout,
        "p_contact_loss": settings.p_contact_loss,
        "p_gross_defect": settings.p_gross_defect,
    }


def site_spec(
    settings: Settings,
    index: int,
    *,
    driver: str | None = None,
    options: Mapping[str, Any] | None = None,
    resource: str | None = None,
) -> SiteSpec:
    """Site ``index`` of driver ``driver`` (default ``settings.driver``) with ``options`` over the
    configured ones (the station's options apply only to the station's own driver)."""
    name = driver or settings.driver
    merged: dict[str, Any] = _simulated_defaults(settings) if name == "simulated" else {}
    configured = settings.sites.get(index) if settings.sites is not None else None
    if name == settings.driver:
        merged.update(settings.driver_options)
        if configured is not None:
            merged.update(configured.options)
            resource = resource or configured.resource
    merged.update(options or {})
    source = f"options of test site {index}"
    try:
        validated = validate_options(name, merged, source=source)
    except (UnknownDriverError, DriverOptionsError) as e:
        raise StationConfigError(str(e)) from e
    return SiteSpec(index, resource, validated, options_sha256(validated))


def station_sites(settings: Settings) -> list[SiteSpec]:
    """Every configured test site, by index: ``CIMCAL_SITES`` / ``CIMCAL_SITES_FILE`` when set, else
    sites ``0 .. CIMCAL_TEST_SITES - 1`` without a resource."""
    indices = sorted(settings.sites) if settings.sites is not None else range(settings.test_sites)
    return [site_spec(settings, i) for i in indices]


# ---------------------------------------------------------------------------------------- provenance
@dataclass(frozen=True)
class TesterProvenance:
    """What measured: the driver and its version, the tester's identity (``Driver.info()``), the test
    site and its resource, the SHA-256 of the site's canonical options, the station host."""

    driver: str
    driver_version: str
    vendor: str
    model: str
    serial: str
    site: int
    resource: str | None
    options_sha256: str
    host: str
    info: dict[str, str] = field(default_factory=dict)


class TesterSite:
    """A test site: its configuration, its driver, and (once connected) the tester's provenance."""

    __test__ = False  # not a pytest class

    def __init__(self, driver_name: str, spec: SiteSpec, driver: Driver) -> None:
        self.driver_name = driver_name
        self.spec = spec
        self.driver = driver
        self.driver_version = driver_version(driver_name)
        self._provenance: TesterProvenance | None = None

    @classmethod
    def build(cls, driver_name: str, spec: SiteSpec) -> TesterSite:
        driver = create_driver(driver_name, spec.options, site=spec.index, resource=spec.resource)
        return cls(driver_name, spec, driver)

    @property
    def index(self) -> int:
        return self.spec.index

    def connect(self, timeout_s: float | None = None) -> None:
        if not self.driver.connected:
            self._provenance = None  # a reconnect may reach another tester behind the resource
            self.driver.connect(timeout_s)

    def provenance(self) -> TesterProvenance:
        """The provenance of what this site measures (asks the connected driver once per connect)."""
        if self._provenance is None:
            info = self.driver.info()
            self._provenance = TesterProvenance(
                driver=self.driver_name,
                driver_version=self.driver_version,
                vendor=info.vendor,
                model=info.model,
                serial=info.serial,
                site=self.index,
                resource=self.spec.resource,
                options_sha256=self.spec.options_sha256,
                host=socket.gethostname(),
                info=dict(info.extra),
            )
        return self._provenance

    def public(self) -> dict[str, Any]:
        return {"driver": self.driver_name, "driver_version": self.driver_version, **self.spec.public()}


def build_driver(settings: Settings, site: int | None = None) -> Driver:
    """An unconnected driver for configured site ``site`` (default: the first)."""
    specs = station_sites(settings)
    spec = specs[0] if site is None else next((s for s in specs if s.index == site), None)
    if spec is None:
        raise StationConfigError(f"no test site {site}; configured: {[s.index for s in specs]}")
    return TesterSite.build(settings.driver, spec).driver


# ---------------------------------------------------------------------------------------------- pool
class DriverPool:
    """Test sites lent out one borrower at a time; connected lazily, reconnected after a failure."""

    def __init__(self, sites: Sequence[TesterSite], *, acquire_timeout_s: float = 300.0) -> None:
        if not sites:
            raise ValueError("a driver pool needs at least one test site")
        self.sites = list(sites)
        self.acquire_timeout_s = acquire_timeout_s
        self._idle: queue.LifoQueue[TesterSite] = queue.LifoQueue()
        for s in self.sites:
            self._idle.put(s)

    @classmethod
    def from_settings(cls, settings: Settings) -> DriverPool:
        sites = []
        for spec in station_sites(settings):
            site = TesterSite.build(settings.driver, spec)
            log.info(
                "test site %d: driver %s %s, resource %s, options %s",
                spec.index,
                site.driver_name,
                site.driver_version,
                spec.resource,
                public_options(spec.options),
            )
            sites.append(site)
        return cls(sites)

    @property
    def size(self) -> int:
        return len(self.sites)

    @property
    def drivers(self) -> list[Driver]:
        return [s.driver for s in self.sites]

    @contextmanager
    def acquire(self, timeout_s: float | None = None) -> Iterator[TesterSite]:
        """An exclusive site with a connected driver; 503 when every site stays busy for ``timeout_s``."""
        try:
            site = self._idle.get(timeout=self.acquire_timeout_s if timeout_s is None else timeout_s)
        except queue.Empty:
            raise UnavailableError(
                f"all {self.size} test sites are busy; retry later", code="testers_busy"
            ) from None
        try:
            site.connect()
            yield site
        finally:
            self._idle.put(site)

    def status(self, *, timeout_s: float = 5.0) -> str:
        """``"ok"`` when an idle driver is (or can be) connected, else why not. All sites busy is ok."""
        try:
            site = self._idle.get_nowait()
        except queue.Empty:
            return "ok"
        try:
            site.connect(timeout_s=timeout_s)
            return "ok"
        except HardwareError as e:
            return f"{e.code}: {e}"
        finally:
            self._idle.put(site)

    def describe(self) -> list[dict[str, Any]]:
        """Every site's driver, resource and options (secrets masked), by index."""
        return [s.public() for s in self.sites]

    def close(self) -> None:
        for s in self.sites:
            s.driver.close()

"""The station's testers: a pool of drivers (one per test site), built from settings, checked by /readyz.

A driver serves one die at a time. Requests and batch workers borrow a driver from the pool for
the whole sequence probe -> operations, so two requests never interleave on one tester; with
``CIMCAL_TEST_SITES=N`` the station runs N dies at once (N probe cards, or N simulated sites).
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from app.config import Settings
from app.errors import UnavailableError
from hardware.driver import Driver, HardwareError
from hardware.registry import create_driver


def build_driver(settings: Settings, site: int = 0) -> Driver:
    """An unconnected driver named by ``settings.driver``; the simulated one gets the fleet knobs."""
    options: dict[str, Any] = {}
    if settings.driver == "simulated":
        options = {
            "fleet_seed": settings.fleet_seed,
            "variation_scale": settings.variation_scale,
            "p_timeout": settings.p_timeout,
            "p_contact_loss": settings.p_contact_loss,
            "p_gross_defect": settings.p_gross_defect,
            # Each site draws its own read noise; the dies themselves are the same fleet.
            "noise_seed": settings.fleet_seed * 1009 + site,
        }
    return create_driver(settings.driver, **options)


class DriverPool:
    """``size`` drivers lent out one borrower at a time; connected lazily, reconnected after a failure."""

    def __init__(self, drivers: list[Driver], *, acquire_timeout_s: float = 300.0) -> None:
        if not drivers:
            raise ValueError("a driver pool needs at least one driver")
        self.drivers = list(drivers)
        self.acquire_timeout_s = acquire_timeout_s
        self._idle: queue.LifoQueue[Driver] = queue.LifoQueue()
        for d in self.drivers:
            self._idle.put(d)

    @classmethod
    def from_settings(cls, settings: Settings) -> DriverPool:
        return cls([build_driver(settings, site) for site in range(settings.test_sites)])

    @property
    def size(self) -> int:
        return len(self.drivers)

    @contextmanager
    def acquire(self, timeout_s: float | None = None) -> Iterator[Driver]:
        """An exclusive, connected driver; 503 when every site stays busy for ``timeout_s``."""
        try:
            driver = self._idle.get(timeout=self.acquire_timeout_s if timeout_s is None else timeout_s)
        except queue.Empty:
            raise UnavailableError(
                f"all {self.size} test sites are busy; retry later", code="testers_busy"
            ) from None
        try:
            if not driver.connected:
                driver.connect()
            yield driver
        finally:
            self._idle.put(driver)

    def status(self, *, timeout_s: float = 5.0) -> str:
        """``"ok"`` when an idle driver is (or can be) connected, else why not. All sites busy is ok."""
        try:
            driver = self._idle.get_nowait()
        except queue.Empty:
            return "ok"
        try:
            if not driver.connected:
                driver.connect(timeout_s=timeout_s)
            return "ok"
        except HardwareError as e:
            return f"{e.code}: {e}"
        finally:
            self._idle.put(driver)

    def close(self) -> None:
        for d in self.drivers:
            d.close()

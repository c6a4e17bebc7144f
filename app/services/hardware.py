"""The tester driver of this station: built from settings, checked by /readyz."""

from __future__ import annotations

from threading import Lock
from typing import Any

from app.config import Settings
from hardware.driver import Driver, HardwareError
from hardware.registry import create_driver


def build_driver(settings: Settings) -> Driver:
    """An unconnected driver named by ``settings.driver``; the simulated one gets the fleet knobs."""
    options: dict[str, Any] = {}
    if settings.driver == "simulated":
        options = {
            "fleet_seed": settings.fleet_seed,
            "variation_scale": settings.variation_scale,
            "p_timeout": settings.p_timeout,
            "p_contact_loss": settings.p_contact_loss,
            "p_gross_defect": settings.p_gross_defect,
        }
    return create_driver(settings.driver, **options)


def driver_status(driver: Driver, lock: Lock, *, timeout_s: float = 5.0) -> str:
    """``"ok"`` when the driver is (or can be) connected, else why not. A driver busy with another
    request is connected by definition."""
    if not lock.acquire(blocking=False):
        return "ok"
    try:
        if not driver.connected:
            driver.connect(timeout_s=timeout_s)
        return "ok"
    except HardwareError as e:
        return f"{e.code}: {e}"
    finally:
        lock.release()

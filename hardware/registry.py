"""Driver discovery through the ``cimcal.drivers`` entry-point group.

A third-party package registers its driver class in its own pyproject::

    [project.entry-points."cimcal.drivers"]
    mytester = "mypkg.driver:MyTesterDriver"

A plugin that fails to import is logged and skipped, and reported by name in :func:`broken_drivers`.
"""

from __future__ import annotations

import logging
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from hardware.driver import Driver

log = logging.getLogger(__name__)

GROUP = "cimcal.drivers"


class UnknownDriverError(LookupError):
    def __init__(self, name: str, available: list[str], broken: dict[str, str]) -> None:
        hint = f"; broken plugins: {broken}" if broken else ""
        super().__init__(f"no driver named {name!r}; available: {available}{hint}")
        self.name = name


@cache
def _discover() -> tuple[dict[str, type[Driver]], dict[str, str]]:
    found: dict[str, type[Driver]] = {}
    broken: dict[str, str] = {}
    for ep in entry_points(group=GROUP):
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Driver)):
                raise TypeError(f"{ep.value} is not a hardware.driver.Driver subclass")
        except Exception as e:  # a broken plugin must not take the service down
            log.error("driver plugin %r failed to load: %s", ep.name, e)
            broken[ep.name] = f"{type(e).__name__}: {e}"
            continue
        found[ep.name] = cls
    if "simulated" not in found and "simulated" not in broken:
        # Running from a source tree that was never pip-installed: the built-in driver still exists.
        from hardware.sim.driver import SimulatedDriver

        found["simulated"] = SimulatedDriver
    return found, broken


def available_drivers() -> list[str]:
    return sorted(_discover()[0])


def broken_drivers() -> dict[str, str]:
    return dict(_discover()[1])


def driver_class(name: str) -> type[Driver]:
    found, broken = _discover()
    try:
        return found[name]
    except KeyError:
        raise UnknownDriverError(name, sorted(found), broken) from None


def create_driver(name: str = "simulated", **options: Any) -> Driver:
    """Instantiate a registered driver with its own keyword options (not yet connected)."""
    return driver_class(name)(**options)


def refresh() -> None:
    """Forget the discovered plugins (after installing one at run time, and in tests)."""
    _discover.cache_clear()

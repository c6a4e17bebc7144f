"""Test plugins registered through real ``cimcal.drivers`` entry points (a ``.dist-info`` folder on
``sys.path``, as pip would have installed it), for the registry, configuration and CLI tests.

* ``keyed``: a simulated tester behind a secret (``api_key``, a ``SecretStr``) with a resource;
* ``unversioned``: the same without a ``version`` attribute (its distribution's version is used);
* ``misnamed``: an entry point whose name is not the class's ``Driver.name`` (refused).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from hardware.driver import DriverInfo
from hardware.sim.driver import SimulatedDriver
from tests.distributions import on_path, subprocess_env, write_distribution

__all__ = ["DIST_VERSION", "KeyedDriver", "UnversionedDriver", "registered", "subprocess_env"]

DIST_VERSION = "0.2.0"
ENTRY_POINTS = {
    "keyed": "tests.hardware.plugins:KeyedDriver",
    "unversioned": "tests.hardware.plugins:UnversionedDriver",
    "misnamed": "tests.hardware.plugins:KeyedDriver",
}


class KeyedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    api_key: SecretStr
    timeout_s: float = Field(5.0, gt=0.0)
    p_timeout: float = Field(0.0, ge=0.0, le=1.0)


class KeyedDriver(SimulatedDriver):
    """A simulated tester that wants a key; its serial names the resource it was given."""

    name = "keyed"
    version: ClassVar[str | None] = "3.1.4"
    Options = KeyedOptions

    def __init__(self, *, api_key: SecretStr, timeout_s: float = 5.0, **kw: Any) -> None:
        super().__init__(default_timeout_s=timeout_s, **kw)
        self.api_key = api_key

    def info(self) -> DriverInfo:
        return DriverInfo(self.name, "Keyed Instruments", "K-1", f"K1-{self.resource}", {"fw": "7.2"})


class UnversionedDriver(KeyedDriver):
    name = "unversioned"
    version = None


@contextmanager
def registered(site_dir: Path) -> Iterator[Path]:
    """The test plugins registered in this process while the context lasts."""
    write_distribution(site_dir, name="cimcal-test-plugins", version=DIST_VERSION, entry_points=ENTRY_POINTS)
    with on_path(site_dir):
        yield site_dir

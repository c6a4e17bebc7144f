"""Test plugins registered through real ``cimcal.drivers`` entry points (a ``.dist-info`` folder on
``sys.path``, as pip would have installed it), for the registry, configuration and CLI tests.

* ``keyed``: a simulated tester behind a secret (``api_key``, a ``SecretStr``) with a resource;
* ``unversioned``: the same without a ``version`` attribute (its distribution's version is used);
* ``misnamed``: an entry point whose name is not the class's ``Driver.name`` (refused).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from hardware import registry
from hardware.driver import DriverInfo
from hardware.sim.driver import SimulatedDriver

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


def write_distribution(site_dir: Path) -> Path:
    dist = site_dir / f"cimcal_test_plugins-{DIST_VERSION}.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: cimcal-test-plugins\nVersion: {DIST_VERSION}\n"
    )
    lines = "".join(f"{name} = {target}\n" for name, target in ENTRY_POINTS.items())
    (dist / "entry_points.txt").write_text(f"[cimcal.drivers]\n{lines}")
    return site_dir


@contextmanager
def registered(site_dir: Path) -> Iterator[Path]:
    """The test plugins registered in this process while the context lasts."""
    write_distribution(site_dir)
    sys.path.insert(0, str(site_dir))
    importlib.invalidate_caches()
    registry.refresh()
    try:
        yield site_dir
    finally:
        sys.path.remove(str(site_dir))
        importlib.invalidate_caches()
        registry.refresh()


def subprocess_env(site_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a command that should see the test plugins as installed."""
    root = Path(__file__).resolve().parents[2]
    path = os.pathsep.join([str(site_dir), str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, **extra}

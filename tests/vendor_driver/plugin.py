"""Register the vendor driver through a real ``cimcal.drivers`` entry point, installing nothing.

:func:`write_distribution` writes the metadata pip would have written for an installed
``acme-cim-driver`` package (``METADATA`` and ``entry_points.txt`` in a ``.dist-info`` folder);
with that folder's parent on ``sys.path`` (in-process) or ``PYTHONPATH`` (a subprocess),
``importlib.metadata.entry_points(group="cimcal.drivers")`` finds ``vendor`` exactly as it finds
an installed plugin, and ``hardware.registry`` loads it from there.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hardware import registry

ROOT = Path(__file__).resolve().parents[2]
DIST = "acme_cim_driver-0.1.0.dist-info"
ENTRY_POINT = "vendor = tests.vendor_driver.driver:VendorDriver"


def write_distribution(site_dir: Path) -> Path:
    """Write the distribution's metadata under ``site_dir``; returns ``site_dir``."""
    dist = site_dir / DIST
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: acme-cim-driver\nVersion: 0.1.0\nSummary: ACME-CIM-9 tester driver for cimcal\n"
    )
    (dist / "entry_points.txt").write_text(f"[cimcal.drivers]\n{ENTRY_POINT}\n")
    return site_dir


@contextmanager
def registered(site_dir: Path) -> Iterator[Path]:
    """The vendor driver registered in this process while the context lasts."""
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
    """The environment of a command that should see the vendor driver as installed."""
    path = os.pathsep.join([str(site_dir), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, **extra}

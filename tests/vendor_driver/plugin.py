"""Register the vendor driver through a real ``cimcal.drivers`` entry point, installing nothing.

:func:`tests.distributions.write_distribution` writes the metadata pip would have written for an installed
``acme-cim-driver`` package (``METADATA`` and ``entry_points.txt`` in a ``.dist-info`` folder);
with that folder's parent on ``sys.path`` (in-process) or ``PYTHONPATH`` (a subprocess),
``importlib.metadata.entry_points(group="cimcal.drivers")`` finds ``vendor`` exactly as it finds
an installed plugin, and ``hardware.registry`` loads it from there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.distributions import ROOT, on_path, subprocess_env, write_distribution

__all__ = ["ROOT", "registered", "subprocess_env"]

ENTRY_POINTS = {"vendor": "tests.vendor_driver.driver:VendorDriver"}


@contextmanager
def registered(site_dir: Path) -> Iterator[Path]:
    """The vendor driver registered in this process while the context lasts."""
    write_distribution(
        site_dir,
        name="acme-cim-driver",
        version="0.1.0",
        entry_points=ENTRY_POINTS,
        summary="ACME-CIM-9 tester driver for cimcal",
    )
    with on_path(site_dir):
        yield site_dir

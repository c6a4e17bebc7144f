"""Plugins registered through real entry points without installing anything: a ``.dist-info`` folder
(``METADATA`` and ``entry_points.txt``, what pip would have written) in a folder put on ``sys.path``
(in-process) or ``PYTHONPATH`` (a subprocess), where ``importlib.metadata`` finds it as it finds an
installed distribution and ``hardware.registry`` loads its drivers."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from hardware import registry

ROOT = Path(__file__).resolve().parents[1]


def write_distribution(
    site_dir: Path, *, name: str, version: str, entry_points: Mapping[str, str], summary: str = ""
) -> Path:
    """Write distribution ``name``'s metadata with its ``cimcal.drivers`` entry points under
    ``site_dir``; returns ``site_dir``."""
    dist = site_dir / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    summary_line = f"Summary: {summary}\n" if summary else ""
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{summary_line}")
    lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[cimcal.drivers]\n{lines}")
    return site_dir


@contextmanager
def on_path(site_dir: Path) -> Iterator[Path]:
    """The distributions under ``site_dir`` registered in this process while the context lasts."""
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
    """The environment of a command that should see the distributions under ``site_dir`` as installed."""
    path = os.pathsep.join([str(site_dir), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, **extra}

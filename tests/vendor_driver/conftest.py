from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vendor_driver.plugin import registered


@pytest.fixture
def vendor_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A site-packages-like folder holding the vendor's distribution metadata, on sys.path for the test."""
    with registered(tmp_path_factory.mktemp("site-packages")) as site_dir:
        yield site_dir

"""Tiny synthetic KWS datasets shared by the app.nn tests (generated once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.nn.kws_data import KwsSplit, load_kws_split

TINY_SEED = 7
TINY_CLIPS = 4  # per class and split
TINY_SPEAKERS = 30


def tiny_split(cache_dir: Path, split: str) -> KwsSplit:
    return load_kws_split(
        split, cache_dir, TINY_SEED, TINY_CLIPS, n_speakers=TINY_SPEAKERS, n_workers=2, progress=False
    )


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("kws-cache")
    tiny_split(cache, "train")
    return cache

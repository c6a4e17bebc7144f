"""The content-addressed image store: many images written at once."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from app.services.images import ImageStore


def test_put_many_stores_what_put_stores(tmp_path: Path) -> None:
    blobs = [bytes([i]) * (1000 + i) for i in range(5)] + [b"\x00" * 1000]  # the last repeats the first
    many = ImageStore(tmp_path / "many")
    one = ImageStore(tmp_path / "one")
    shas = many.put_many(blobs)
    assert shas == [one.put(b) for b in blobs]
    assert shas[0] == shas[-1]
    for sha, data in zip(shas, blobs, strict=True):
        assert many.get(sha) == data
        assert many.path(sha).read_bytes() == one.path(sha).read_bytes()
    assert not list((tmp_path / "many").rglob(".tmp-*"))  # no temporary file left behind
    assert many.put_many(blobs) == shas  # idempotent


def test_put_many_takes_the_callers_hashes(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    blobs = [b"a" * 10, b"b" * 10]
    shas = [hashlib.sha256(b).hexdigest() for b in blobs]
    assert store.put_many(blobs, shas) == shas
    assert store.get(shas[1]) == blobs[1]
    with pytest.raises(ValueError):
        store.put_many(blobs, shas[:1])

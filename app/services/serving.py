"""In-memory answers for the hot paths: API key -> principal, (die, model) -> current image, image bytes.

A station fetching weight images should cost the service about what a trivial route costs, so a
repeated request reads no database row and no file:

* **principals**, keyed by the SHA-256 of the key (the plaintext is never kept);
* **current images** ``(ecid, model) -> ServedImage`` (hash, size, headers);
* **image bytes** by SHA-256, least recently used first out past a byte budget. Content-addressed:
  bytes never go stale, and they were verified against their hash when read from the store.

The first two are exact: they are dropped whenever the deployment's change counter moves
(app/services/changes.py: a new current signature or a revoked key, bumped when its transaction
commits, in this process or any other sharing the image store). An entry is also dropped after
``ttl_s``: the bound for a change the counter cannot see (another host without the shared store, a
database restored or edited by hand). ``ttl_s = 0`` turns both caches off.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from app.db.session import session_scope
from app.errors import NotFoundError
from app.services import auth, calibration
from app.services.auth import Principal
from app.services.images import ImageStore
from app.services.runtime import ModelRuntimes

MAX_ENTRIES = 4096
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class ServedImage:
    """What an image response needs: the hash (the ETag's tag), the size and the download name."""

    content_sha256: str
    size_bytes: int
    etag: str
    filename: str


def served_image(ecid: str, model: str, outcome: calibration.ImageOutcome) -> ServedImage:
    return ServedImage(
        content_sha256=outcome.content_sha256,
        size_bytes=outcome.size_bytes,
        etag=f'"{outcome.content_sha256}"',
        filename=f"{ecid}_{model.replace('@', '_')}.cimg",
    )


class _Answers(Generic[K, V]):
    """Entries that expire after a time-to-live and all go when the change counter moves."""

    def __init__(self) -> None:
        self._entries: dict[K, tuple[V, float]] = {}

    def get(self, key: K, now: float) -> V | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        if hit[1] <= now:
            self._entries.pop(key, None)
            return None
        return hit[0]

    def put(self, key: K, value: V, expires: float) -> None:
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()  # a flood of distinct keys: start over rather than grow
        self._entries[key] = (value, expires)

    def clear(self) -> None:
        self._entries.clear()


class ServingCache:
    """The process's cached answers over one image store (see the module docstring)."""

    def __init__(self, store: ImageStore, *, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self._seen = store.changes.value()
        self._principals: _Answers[str, Principal] = _Answers()
        self._images: _Answers[tuple[str, str], ServedImage] = _Answers()
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._blob_bytes = 0
        self._lock = threading.Lock()

    # ---- freshness
    def _current(self) -> int:
        """The counter's value, dropping every answer when it moved since the last look."""
        value = self.store.changes.value()
        if value != self._seen:
            with self._lock:
                if value != self._seen:
                    self._principals.clear()
                    self._images.clear()
                    self._seen = value
        return value

    def clear(self) -> None:
        """Drop every answer (the database changed under the process, e.g. a test emptied it)."""
        with self._lock:
            self._principals.clear()
            self._images.clear()

    # ---- principals
    def principal(self, raw_key: str) -> Principal | None:
        self._current()
        return self._principals.get(_digest(raw_key), time.monotonic())

    def authenticate(self, factory: sessionmaker[Session], raw_key: str | None, ttl_s: float) -> Principal:
        """Check ``raw_key`` against the database (a blocking call) and remember a valid one."""
        before = self._current()
        with session_scope(factory, read_only=True) as session:
            principal = auth.authenticate(session, raw_key)
        assert raw_key is not None  # authenticate refused a missing key
        self._remember(self._principals, _digest(raw_key), principal, before, ttl_s)
        return principal

    # ---- current images
    def image(self, ecid: str, model: str) -> ServedImage | None:
        self._current()
        return self._images.get((ecid, model), time.monotonic())

    def compute_image(
        self,
        factory: sessionmaker[Session],
        runtimes: ModelRuntimes,
        ecid: str,
        model: str,
        actor: str,
        ttl_s: float,
    ) -> ServedImage:
        """The die's current image, computed and stored on first request (blocking)."""
        before = self._current()
        # Read in a read-only unit of work; a new image is stored through a short write of its own.
        with session_scope(factory, read_only=True) as session:
            outcome = calibration.compensate_die(
                session, runtimes, self.store, ecid, model, actor=actor, write_db=factory
            )
        served = served_image(ecid, model, outcome)
        self._remember(self._images, (ecid, model), served, before, ttl_s)
        return served

    # ---- bytes
    def cached_bytes(self, sha256: str) -> bytes | None:
        data = self._blobs.get(sha256)
        if data is not None:
            with suppress(KeyError):  # evicted by another thread meanwhile: still a valid answer
                self._blobs.move_to_end(sha256)
        return data

    def load_bytes(self, served: ServedImage) -> bytes:
        """The image's bytes from the store, verified against their hash (blocking), then kept."""
        data = self.store.get(served.content_sha256)
        if data is None:
            raise NotFoundError(
                f"image {served.content_sha256} is missing from the store", code="image_missing"
            )
        if len(data) <= self.max_bytes:
            with self._lock:
                if served.content_sha256 not in self._blobs:
                    self._blobs[served.content_sha256] = data
                    self._blob_bytes += len(data)
                while self._blob_bytes > self.max_bytes:
                    _, old = self._blobs.popitem(last=False)
                    self._blob_bytes -= len(old)
        return data

    # ---- internals
    def _remember(self, answers: _Answers[K, V], key: K, value: V, before: int, ttl_s: float) -> None:
        # Kept only if nothing changed since before the database was read: a change committed
        # meanwhile may not be in what was read.
        if ttl_s <= 0:
            return
        with self._lock:
            if self.store.changes.value() == before == self._seen:
                answers.put(key, value, time.monotonic() + ttl_s)


def _digest(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()

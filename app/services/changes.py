"""A change counter shared by the processes of one deployment, so that in-process caches stay exact.

The hot paths of the API keep short-lived answers in memory (key -> principal, (die, model) -> image;
app/services/serving.py). Every process that can change such an answer (a new current signature, a
revoked key) marks its session with :func:`mark_changed`; when that session commits, every counter
registered in the process is bumped. A counter is a small file (``<image store>/.changes``) that
every process of the deployment maps into memory, so a reader sees a bump from another worker,
the job runner or the CLI with one memory read, and drops its cached answers.

A process that does not share the file (another host without the shared store) is not seen: the
caches' time-to-live bounds how long its changes can go unnoticed.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.orm import Session

_CHANGED = "cimcal_cached_answers_changed"
_WORD = struct.Struct("<Q")


class ChangeCounter:
    """A 64-bit counter in a file, read through a shared memory map and bumped under a file lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked() as fd:
            if os.fstat(fd).st_size < _WORD.size:
                os.ftruncate(fd, _WORD.size)
            self._map = mmap.mmap(fd, _WORD.size)  # keeps its own handle on the file
        self._lock = threading.Lock()
        _COUNTERS.add(self)

    def value(self) -> int:
        return int(_WORD.unpack_from(self._map, 0)[0])

    def bump(self) -> None:
        with self._lock, self._locked():
            _WORD.pack_into(self._map, 0, self.value() + 1)

    def close(self) -> None:
        _COUNTERS.discard(self)
        self._map.close()

    @contextmanager
    def _locked(self) -> Iterator[int]:
        """The file, open and exclusively locked against the other processes' bumps."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            # Unlock explicitly: closing is not enough once the memory map, which duplicates the
            # descriptor, shares this open file (and its lock).
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


_COUNTERS: weakref.WeakSet[ChangeCounter] = weakref.WeakSet()


def mark_changed(session: Session) -> None:
    """Cached answers change when this session's transaction commits (a signature, a revocation)."""
    session.info[_CHANGED] = True


@event.listens_for(Session, "after_commit")
def _bump_after_commit(session: Session) -> None:
    # After the commit, not before: a reader that refills its cache between a bump and the commit
    # would read the old rows and keep them. (A session that rolled back keeps its mark until it
    # commits something else: one needless refill, never a missed one.)
    if session.info.pop(_CHANGED, False):
        for counter in list(_COUNTERS):
            counter.bump()

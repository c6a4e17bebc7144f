"""The runner interface.

``submit(job_id)`` reads the job's open dies from the database and hands them out in chunks;
``resume()`` submits every unfinished job (what the local runner does when the service starts).
Neither keeps state that the database does not also hold: a lost chunk is found again by ``resume``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

from app.services import jobs as jobs_service

log = logging.getLogger(__name__)

DEFAULT_CHUNK_DIES = 8


class JobRunner(ABC):
    """Where job chunks run."""

    name: str = "abstract"

    def __init__(self, chunk_dies: int = DEFAULT_CHUNK_DIES) -> None:
        if chunk_dies < 1:
            raise ValueError("chunk_dies must be at least 1")
        self.chunk_dies = chunk_dies

    def start(self) -> None:  # noqa: B027 (optional hook)
        """Start serving (and resume unfinished jobs where the runner owns the execution)."""

    def stop(self, timeout_s: float = 30.0) -> None:  # noqa: B027 (optional hook)
        """Stop taking work; dies in progress finish their current step."""

    @abstractmethod
    def _send(self, job_id: int, die_ids: list[int]) -> None: ...

    @abstractmethod
    def _open_die_ids(self, job_id: int) -> list[int]: ...

    @abstractmethod
    def _open_job_ids(self) -> list[int]: ...

    def submit(self, job_id: int) -> int:
        """Hand out the job's open dies in chunks; returns the number of chunks."""
        parts = jobs_service.chunks(self._open_die_ids(job_id), self.chunk_dies)
        for part in parts:
            self._send(job_id, part)
        log.info("job %d: %d chunks submitted to the %s runner", job_id, len(parts), self.name)
        return len(parts)

    def resume(self, job_ids: list[int] | None = None) -> list[int]:
        """Submit every queued or running job (of ``job_ids``) again; a duplicate chunk is harmless:
        it only finds claimed or finished dies."""
        open_ids = self._open_job_ids()
        chosen = open_ids if job_ids is None else [j for j in open_ids if j in set(job_ids)]
        for job_id in chosen:
            self.submit(job_id)
        return chosen

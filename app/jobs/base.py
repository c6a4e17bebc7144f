"""The runner interface and its supervisor.

``submit(job_id)`` reads the job's open dies from the database and hands them out in chunks;
``resume()`` submits every unfinished job (what the local runner does when the service starts).
Neither keeps state that the database does not also hold: a lost chunk is found again by the
**supervisor**, a thread that every ``supervise_s`` looks for open jobs nobody works on (no live
claim, no item activity for ``quiet_s``) that the runner does not hold either (:meth:`JobRunner._holds`:
the local runner's in-memory queue, the broker's queue) and submits them again. So a broker that lost
its queue, or a send that failed while the broker was down, never leaves a job stuck; the claims keep
every die exactly-once.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod

from sqlalchemy.orm import Session, sessionmaker

from app.services import jobs as jobs_service

log = logging.getLogger(__name__)

DEFAULT_CHUNK_DIES = 8
DEFAULT_LEASE_S = 60.0
DEFAULT_SUPERVISE_S = 5.0


class JobRunner(ABC):
    """Where job chunks run. ``lease_s`` is the workers' lease (a claim without a heartbeat for
    that long is dead); ``factory`` the database (a runner without one, a test's stand-in, reads no
    job and has no supervisor); ``supervise_s`` the supervisor's period (None: no supervisor); ``quiet_s``
    (default: half a lease) how long a job must show no item activity before it counts as stalled."""

    name: str = "abstract"

    def __init__(
        self,
        chunk_dies: int = DEFAULT_CHUNK_DIES,
        *,
        factory: sessionmaker[Session] | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        supervise_s: float | None = DEFAULT_SUPERVISE_S,
        quiet_s: float | None = None,
    ) -> None:
        if chunk_dies < 1:
            raise ValueError("chunk_dies must be at least 1")
        if lease_s <= 0 or (supervise_s is not None and supervise_s <= 0):
            raise ValueError("lease_s and supervise_s must be positive")
        self.factory = factory
        self.chunk_dies = chunk_dies
        self.lease_s = lease_s
        self.supervise_s = supervise_s
        self.quiet_s = lease_s / 2 if quiet_s is None else quiet_s
        self._resent_at: dict[int, float] = {}  # job id -> time.monotonic() of the last re-send
        self._supervisor: threading.Thread | None = None
        self._supervisor_stop = threading.Event()

    def start(self) -> None:  # noqa: B027 (optional hook)
        """Start serving (and resume unfinished jobs where the runner owns the execution)."""

    def stop(self, timeout_s: float = 30.0) -> None:  # noqa: B027 (optional hook)
        """Stop taking work; dies in progress finish their current step."""

    @abstractmethod
    def _send(self, job_id: int, die_ids: list[int]) -> None: ...

    def _open_die_ids(self, job_id: int) -> list[int]:
        assert self.factory is not None, "a runner without a database must override this"
        return jobs_service.open_die_ids(self.factory, job_id)

    def _open_job_ids(self) -> list[int]:
        assert self.factory is not None, "a runner without a database must override this"
        return jobs_service.open_job_ids(self.factory)

    def _holds(self, job_id: int) -> bool:
        """Whether this runner still holds work of the job that will reach a worker (a chunk in its
        queue); the supervisor leaves those jobs alone. Default: no."""
        return False

    def _may_resend(self) -> bool:
        """Whether re-sending can help now (e.g. the broker is reachable and its queue is empty)."""
        return True

    def supervise(self) -> list[int]:
        """Submit again every stalled job (see the module's docstring); returns their IDs."""
        if self.factory is None or not self._may_resend():
            return []
        stalled = jobs_service.stalled_job_ids(self.factory, lease_s=self.lease_s, quiet_s=self.quiet_s)
        resent = []
        now = time.monotonic()
        # A re-sent chunk needs time to reach a worker that may still be starting: one lease + quiet.
        grace_s = self.lease_s + self.quiet_s
        self._resent_at = {j: t for j, t in self._resent_at.items() if j in stalled and now - t < grace_s}
        for job_id in stalled:
            if job_id in self._resent_at or self._holds(job_id):
                continue
            die_ids = self._open_die_ids(job_id)  # read after _holds: a chunk may just have ended
            if not die_ids:
                continue
            self._submit_dies(job_id, die_ids)
            self._resent_at[job_id] = now
            jobs_service.record_resend(self.factory, job_id, dies=len(die_ids), runner=self.name)
            log.warning(
                "job %d: stalled (no live claim, no activity for %.1f s); re-sent %d dies",
                job_id,
                self.quiet_s,
                len(die_ids),
            )
            resent.append(job_id)
        return resent

    def start_supervisor(self) -> None:
        if self.supervise_s is None or self.factory is None or self._supervisor is not None:
            return
        self._supervisor_stop.clear()
        self._supervisor = threading.Thread(
            target=self._supervise_loop, name="cimcal-job-supervisor", daemon=True
        )
        self._supervisor.start()

    def stop_supervisor(self) -> None:
        self._supervisor_stop.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=10)
            self._supervisor = None

    def _supervise_loop(self) -> None:
        assert self.supervise_s is not None
        while not self._supervisor_stop.wait(self.supervise_s):
            try:
                self.supervise()
            except Exception:  # the database or the broker is away: the next round tries again
                log.warning("job supervisor: round failed", exc_info=True)

    def submit(self, job_id: int) -> int:
        """Hand out the job's open dies in chunks; returns the number of chunks."""
        return self._submit_dies(job_id, self._open_die_ids(job_id))

    def _submit_dies(self, job_id: int, die_ids: list[int]) -> int:
        parts = jobs_service.chunks(die_ids, self.chunk_dies)
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

"""The in-process runner: a pool of threads fed from an in-memory queue of chunks."""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter

from app.jobs.base import DEFAULT_CHUNK_DIES, DEFAULT_SUPERVISE_S, JobRunner
from app.services import jobs as jobs_service
from app.services.jobs import ExecutionContext

log = logging.getLogger(__name__)

DB_RETRY_S = 5.0

__all__ = ["DB_RETRY_S", "DEFAULT_CHUNK_DIES", "JobRunner", "LocalRunner"]


class LocalRunner(JobRunner):
    """A pool of ``workers`` threads in this process, fed from an in-memory queue of chunks.

    The queue is only a hint: on start the runner resumes unfinished jobs from the database, a die
    another (possibly dead) worker holds is retried after the lease, and the supervisor runs an open
    job that nothing works on and that is not in this queue (e.g. its submit failed). Threads suit the station:
    each thread drives one test site, and the numerics release the GIL for most of their time.
    """

    name = "local"

    def __init__(
        self,
        context: ExecutionContext,
        *,
        workers: int = 2,
        chunk_dies: int = DEFAULT_CHUNK_DIES,
        resume_on_start: bool = True,
        supervise_s: float | None = DEFAULT_SUPERVISE_S,
        quiet_s: float | None = None,
    ) -> None:
        super().__init__(
            chunk_dies,
            factory=context.factory,
            lease_s=context.lease_s,
            supervise_s=supervise_s,
            quiet_s=quiet_s,
        )
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.context = context
        self.workers = workers
        self.resume_on_start = resume_on_start
        self._queue: queue.Queue[tuple[int, list[int]] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._timers: set[threading.Timer] = set()
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._outstanding = 0
        self._per_job: Counter[int] = Counter()  # chunks queued, running or waiting for a retry

    # ---- lifecycle
    def start(self) -> None:
        if self._threads:
            return
        self._stopping.clear()
        self.context.start()
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"cimcal-job-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        if self.resume_on_start:
            resumed = self.resume()
            if resumed:
                log.info("resumed unfinished jobs %s", resumed)
        self.start_supervisor()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.stop_supervisor()
        self._stopping.set()
        for timer in list(self._timers):
            timer.cancel()
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=timeout_s)
        self._threads.clear()
        self.context.stop()

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until no chunk is queued, running or waiting for a retry; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._outstanding == 0, timeout=timeout_s)

    # ---- JobRunner
    def _send(self, job_id: int, die_ids: list[int]) -> None:
        with self._idle:
            self._outstanding += 1
            self._per_job[job_id] += 1
        self._queue.put((job_id, die_ids))

    def _holds(self, job_id: int) -> bool:
        with self._idle:
            return self._per_job[job_id] > 0

    # ---- internals
    def _done_one(self, job_id: int) -> None:
        with self._idle:
            self._outstanding -= 1
            self._per_job[job_id] -= 1
            if self._per_job[job_id] <= 0:
                del self._per_job[job_id]
            if self._outstanding == 0:
                self._idle.notify_all()

    def _later(self, delay_s: float, job_id: int, die_ids: list[int]) -> None:
        """Re-queue a chunk after ``delay_s`` (it stays outstanding meanwhile)."""

        def fire() -> None:
            self._timers.discard(timer)
            if self._stopping.is_set():
                self._done_one(job_id)
            else:
                self._queue.put((job_id, die_ids))

        timer = threading.Timer(delay_s, fire)
        timer.daemon = True
        self._timers.add(timer)
        timer.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job_id, die_ids = item
            if self._stopping.is_set():
                self._done_one(job_id)
                continue
            retry: tuple[float, list[int]] | None = None
            try:
                result = jobs_service.process_chunk(
                    self.context, job_id, die_ids, should_stop=self._stopping.is_set
                )
                if result.busy and not result.stopped:
                    retry = (self.context.lease_s, result.busy)
            except Exception:
                log.exception("job %d: chunk failed; retrying in %.0f s", job_id, DB_RETRY_S)
                retry = (DB_RETRY_S, die_ids)
            if retry is not None and not self._stopping.is_set():
                self._later(retry[0], job_id, retry[1])
            else:
                self._done_one(job_id)

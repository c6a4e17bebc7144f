"""Several server processes, one job runner (``cimcal serve --workers N``).

The processes share a lock file (``CIMCAL_RUNNER_LOCK_FILE``, set by ``cimcal serve --workers``); the
one holding its exclusive ``flock`` runs the runner, the others try again every ``poll_s`` and take
over when the holder dies (the kernel releases a dead process's lock).

* **local runner**: a job POSTed to a process without the runner is only in the database; the
  elected process looks for open jobs it has not submitted every ``poll_s`` and submits them, so a
  job starts within ``poll_s`` whichever process accepted it. Each job is submitted once per
  election (a job the elected process accepted itself is not picked up again).
* **celery runner**: every process sends to the broker; only the elected one runs the runner's
  start-up duties (re-sending unfinished jobs).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path

from app.jobs.base import JobRunner
from app.jobs.runner import LocalRunner

log = logging.getLogger(__name__)

POLL_S = 1.0


class RunnerLock:
    """An exclusive, non-blocking ``flock`` on a file, held for the life of the process that wins it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for whoever looks
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class ElectedRunner(JobRunner):
    """``runner`` run by the one process of several that holds ``lock`` (see the module docstring).

    Build ``runner`` with ``resume_on_start=False``: the elected process resumes unfinished jobs itself,
    so that it knows which ones it submitted.
    """

    def __init__(self, runner: JobRunner, lock: RunnerLock, *, poll_s: float = POLL_S) -> None:
        super().__init__(runner.chunk_dies)
        self.name = runner.name
        self.runner = runner
        self.lock = lock
        self.poll_s = poll_s
        self._picks_up = isinstance(runner, LocalRunner)
        self._submitted: set[int] = set()
        self._mutex = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def elected(self) -> bool:
        return self.lock.held

    # ---- lifecycle
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._try_elect()
        self._thread = threading.Thread(target=self._loop, name="cimcal-runner-election", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        if self.elected:
            self.runner.stop(timeout_s)
            self.lock.release()

    # ---- JobRunner
    def submit(self, job_id: int) -> int:
        if not self._picks_up:
            return self.runner.submit(job_id)
        with self._mutex:
            if not self.elected:
                log.info("job %d: left for the process that runs the job runner", job_id)
                return 0
            if job_id in self._submitted:
                return 0
            self._submitted.add(job_id)
        return self.runner.submit(job_id)

    def resume(self, job_ids: list[int] | None = None) -> list[int]:
        if not self.elected:
            return []
        resumed = self.runner.resume(job_ids)
        with self._mutex:
            self._submitted.update(resumed)
        return resumed

    def _send(self, job_id: int, die_ids: list[int]) -> None:
        self.runner._send(job_id, die_ids)

    def _open_die_ids(self, job_id: int) -> list[int]:
        return self.runner._open_die_ids(job_id)

    def _open_job_ids(self) -> list[int]:
        return self.runner._open_job_ids()

    # ---- internals
    def _try_elect(self) -> None:
        if self.elected or not self.lock.try_acquire():
            return
        log.info("process %d runs the %s job runner", os.getpid(), self.name)
        self.runner.start()
        if self._picks_up:
            self.resume()

    def _loop(self) -> None:
        while not self._stopping.wait(self.poll_s):
            try:
                self._try_elect()
                if self.elected and self._picks_up:
                    self._pick_up()
            except Exception:  # the database may be away for a while: try again next time
                log.exception("job runner election: poll failed")

    def _pick_up(self) -> None:
        """Submit open jobs accepted by other processes (each once)."""
        with self._mutex:
            known = set(self._submitted)
        open_ids = set(self.runner._open_job_ids())
        with self._mutex:
            new = sorted(open_ids - self._submitted)
            # Forget jobs that ended; only those known before the read (one submitted meanwhile
            # may be missing from it).
            self._submitted -= known - open_ids
            self._submitted.update(new)
        for job_id in new:
            self.runner.submit(job_id)

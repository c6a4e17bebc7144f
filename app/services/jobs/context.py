"""Where a chunk runs: the step functions a job calls, this worker's identity, its claims' heartbeat."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker
from threadpoolctl import threadpool_limits

from app.db.base import utcnow
from app.db.repositories import jobs as repo
from app.db.session import session_scope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepCall:
    """One step on one die, as the step functions receive it (IDs and the job's parameters only).

    ``item_id`` and ``attempt`` name this attempt of the job item: the attempt number counts every
    attempt the item started, over redeliveries too, so ``(item_id, attempt)`` is unique per attempt
    (what makes an alarm write idempotent). Callers outside a job leave them at their defaults."""

    job_id: int
    die_id: int
    ecid: str
    step: str
    model: str | None
    force: bool
    item_id: int | None = None
    attempt: int = 1
    error: BaseException | None = None
    """For the alarm step: the hardware error that ended the step."""


StepFn = Callable[[StepCall], object]


@dataclass(frozen=True)
class StepFunctions:
    """The per-die use cases a job calls. :func:`app.jobs.steps.calibration_steps` binds the real
    ones; tests bind their own. ``alarm(call, reason, die_fault)`` bins a die whose step could not
    complete: the alarm bin (0), or the die-fault bin when the die itself is bad."""

    characterize: StepFn
    compensate: StepFn
    functional_test: StepFn
    alarm: Callable[[StepCall, str, bool], None]

    def for_step(self, step: str) -> StepFn:
        return {
            "characterize": self.characterize,
            "compensate": self.compensate,
            "functional-test": self.functional_test,
        }[step]


def worker_id() -> str:
    """``host:pid:nonce``: tells which process holds an item (for people reading the table)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{os.urandom(3).hex()}"


class Heartbeat:
    """Refreshes, every ``interval_s`` on a daemon thread, the lease of the items held by the claims
    in progress in this process. A process that dies, or a chunk that fails, stops beating for its
    claims: their items become claimable again once the lease runs out."""

    def __init__(self, factory: sessionmaker[Session], interval_s: float) -> None:
        self.factory = factory
        self.interval_s = interval_s
        self._claims: dict[str, int] = {}  # claim token -> job id
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="cimcal-heartbeat", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def track(self, token: str, job_id: int) -> None:
        with self._lock:
            self._claims[token] = job_id

    def untrack(self, token: str) -> None:
        with self._lock:
            self._claims.pop(token, None)

    def beat(self) -> int:
        with self._lock:
            claims = dict(self._claims)
        if not claims:
            return 0
        with session_scope(self.factory) as s:
            return repo.heartbeat(s, owners=list(claims), job_ids=set(claims.values()), now=utcnow())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception:  # the database may be briefly away; the next beat retries
                log.warning("job heartbeat failed", exc_info=True)


@dataclass
class ExecutionContext:
    """Everything :func:`process_chunk` needs in one process: the database, the step functions, this
    worker's identity and lease. Items are claimed under a token ``<owner>/<n>``, one per
    :func:`process_chunk` call, kept alive by the heartbeat (every ``lease_s / 4``)."""

    factory: sessionmaker[Session]
    steps: StepFunctions
    lease_s: float = 60.0
    owner: str = field(default_factory=worker_id)
    sleep: Callable[[float], None] = time.sleep
    heartbeat: Heartbeat | None = None
    _numerics_pinned: bool = field(default=False, init=False, repr=False)
    _claims: itertools.count[int] = field(default_factory=itertools.count, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.heartbeat is None:
            self.heartbeat = Heartbeat(self.factory, interval_s=max(0.05, self.lease_s / 4))

    def new_claim(self) -> str:
        return f"{self.owner}/{next(self._claims)}"

    def start(self) -> None:
        assert self.heartbeat is not None
        self.heartbeat.start()

    def pin_numerics(self) -> None:
        """Run BLAS single-threaded in this process once it works on jobs: the runner works on
        several dies at once, and BLAS threads per die on top of that oversubscribe the cores
        (measured: characterization 2.9 s per die with one BLAS thread, 5-6.5 s with two, on a busy
        2-core machine). Done on the first chunk, not at start: a service that runs no job keeps
        its defaults."""
        if not self._numerics_pinned:
            threadpool_limits(limits=1, user_api="blas")
            self._numerics_pinned = True

    def stop(self) -> None:
        assert self.heartbeat is not None
        self.heartbeat.stop()

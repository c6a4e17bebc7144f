"""Batch calibration jobs: create, read progress, cancel, and process a chunk of dies.

The job's truth lives in the database: one ``job`` row and one ``job_item`` per (die, step). A runner
(:mod:`app.jobs`) only decides *where* :func:`process_chunk` runs (an in-process thread pool or a
Celery worker) and hands it IDs; every per-die write is done by an idempotent use case, so a chunk
that is delivered twice, or resumed after a crash, changes nothing that was already done.

Per die, the job's steps run in order (characterize -> compensate -> functional-test). Hardware
errors:

* transient (:data:`hardware.driver.TRANSIENT_ERRORS`): retried with exponential back-off up to the
  job's :class:`RetryPolicy`; after the last attempt the die gets the alarm bin (0) with the reason
  and the job goes on;
* :class:`~hardware.driver.DieFault`: not retried; the die gets the die-fault bin with the reason
  (``steps.alarm(..., die_fault=True)``); any other hardware error (a protocol error, a lost tester)
  is not retried either and gets the alarm bin;
* a service error (e.g. compensating a die without a signature) fails the item with its message;
* a database error (``OperationalError``: connection lost, SQLite busy) is not the die's fault: the
  chunk stops, the die's claims are handed back and the runner runs the chunk again later.

A step whose earlier step failed on that die is not run (failed, "not run: <step> failed").
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from threadpoolctl import threadpool_limits

from app.db.base import utcnow
from app.db.repositories import audit
from app.db.repositories import jobs as repo
from app.db.session import session_scope
from app.db.tables import Job, JobState
from app.errors import AppError, ConflictError, InvalidInputError, NotFoundError
from app.services import lots as lots_service
from app.services import models as models_service
from hardware.driver import TRANSIENT_ERRORS, DieFault, HardwareError

log = logging.getLogger(__name__)

JOB_KIND = "calibrate"
STEP_ORDER: tuple[str, ...] = ("characterize", "compensate", "functional-test")
NEEDS_MODEL = frozenset({"compensate", "functional-test"})
TERMINAL_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})
OPEN_STATES = frozenset({JobState.queued, JobState.running})


# ------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per step for transient hardware errors; the k-th retry waits
    ``min(backoff_max_s, backoff_s * 2**(k-1))``."""

    max_attempts: int = 4
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError(f"invalid retry policy {self}")

    def delay_s(self, attempt: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class DieSelection:
    """Which dies of the lot: all of them, one wafer, or a list of ECIDs."""

    kind: Literal["all", "wafer", "ecids"] = "all"
    wafer: int | None = None
    ecids: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        if self.kind == "wafer":
            return {"kind": "wafer", "wafer": self.wafer}
        if self.kind == "ecids":
            return {"kind": "ecids", "ecids": list(self.ecids)}
        return {"kind": "all"}


@dataclass(frozen=True)
class JobParams:
    """What a calibration job does; stored as ``job.params`` (JSON)."""

    lot_id: str
    steps: tuple[str, ...]
    model: str | None = None  # "name@version"
    model_id: int | None = None
    force: bool = False
    functional_test_sample: float = 1.0
    dies: dict[str, Any] = field(default_factory=lambda: {"kind": "all"})
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = list(self.steps)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobParams:
        return cls(
            lot_id=d["lot_id"],
            steps=tuple(d["steps"]),
            model=d.get("model"),
            model_id=d.get("model_id"),
            force=bool(d.get("force", False)),
            functional_test_sample=float(d.get("functional_test_sample", 1.0)),
            dies=dict(d.get("dies") or {"kind": "all"}),
            retry=RetryPolicy(**(d.get("retry") or {})),
        )


def parse_model_ref(model_ref: str) -> tuple[str, str]:
    name, sep, version = model_ref.partition("@")
    if not sep or not name or not version:
        raise InvalidInputError(f"model {model_ref!r}: expected 'name@version'", code="invalid_model_ref")
    return name, version


def in_sample(ecid: str, fraction: float) -> bool:
    """Deterministic sample of dies: the same ECIDs are picked on every run for one fraction."""
    if fraction >= 1.0:
        return True
    h = int.from_bytes(hashlib.sha256(ecid.encode()).digest()[:8], "big")
    return h / 2.0**64 < fraction


def ordered_steps(steps: Collection[str]) -> tuple[str, ...]:
    unknown = set(steps) - set(STEP_ORDER)
    if unknown:
        raise InvalidInputError(f"unknown steps {sorted(unknown)}; known: {list(STEP_ORDER)}")
    if not steps:
        raise InvalidInputError("no steps given")
    return tuple(s for s in STEP_ORDER if s in steps)


# --------------------------------------------------------------------------------------- creation
def create_calibration_job(
    session: Session,
    *,
    lot_id: str,
    steps: Collection[str],
    model: str | None,
    dies: DieSelection | None = None,
    force: bool = False,
    functional_test_sample: float = 1.0,
    retry: RetryPolicy | None = None,
    actor: str,
) -> Job:
    """Create the job and one queued item per (die, step); the caller submits it to a runner after
    the transaction commits."""
    ordered = ordered_steps(steps)
    if not 0.0 < functional_test_sample <= 1.0:
        raise InvalidInputError("functional_test_sample must be in (0, 1]")
    model_id = None
    if NEEDS_MODEL & set(ordered) and model is None:
        raise InvalidInputError(f"steps {list(ordered)} need a model ('name@version')")
    if model is not None:
        model_id = models_service.get_model(session, *parse_model_ref(model)).id
    lots_service.get_lot(session, lot_id)  # 404 when missing
    dies = dies or DieSelection()

    if dies.kind == "wafer":
        if dies.wafer is None:
            raise InvalidInputError("dies.kind 'wafer' needs a wafer number")
        lots_service.get_wafer(session, lot_id, dies.wafer)
        targets = repo.lot_dies(session, lot_id, wafer=dies.wafer)
    elif dies.kind == "ecids":
        targets = repo.lot_dies(session, lot_id, ecids=set(dies.ecids))
        missing = sorted(set(dies.ecids) - {e for _, e in targets})
        if missing:
            raise NotFoundError(
                f"{len(missing)} ECIDs are not dies of lot {lot_id!r}", details={"missing": missing[:20]}
            )
    else:
        targets = repo.lot_dies(session, lot_id)
    if not targets:
        raise InvalidInputError(f"lot {lot_id!r}: no dies selected")

    params = JobParams(
        lot_id=lot_id,
        steps=ordered,
        model=model,
        model_id=model_id,
        force=force,
        functional_test_sample=functional_test_sample,
        dies=dies.as_dict(),
        retry=retry or RetryPolicy(),
    )
    now = utcnow()
    job = repo.add(
        session,
        Job(
            kind=JOB_KIND,
            state=JobState.queued,
            lot_id=lot_id,
            params=params.to_json(),
            counters={},
            created_by=actor,
            created_at=now,
        ),
    )
    rows = [
        {"job_id": job.id, "die_id": die_id, "step": step, "state": JobState.queued, "updated_at": now}
        for die_id, ecid in targets
        for step in ordered
        if step != "functional-test" or in_sample(ecid, functional_test_sample)
    ]
    repo.add_items(session, rows)
    audit.add(
        session,
        actor=actor,
        action="job.create",
        target=f"job:{job.id}",
        details={"lot_id": lot_id, "steps": list(ordered), "model": model, "dies": len(targets)},
    )
    return job


# --------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class StepProgress:
    step: str
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    dies_per_s: float | None

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.cancelled


@dataclass(frozen=True)
class JobProgress:
    job: Job
    steps: list[StepProgress]
    total_dies: int
    open_dies: int
    dies_per_s: float | None
    eta_s: float | None
    errors: list[tuple[str, str, int, str]]


def _rate(n: int, t0: datetime | None, t1: datetime | None) -> float | None:
    if n == 0 or t0 is None or t1 is None:
        return None
    elapsed = (t1 - t0).total_seconds()
    return n / elapsed if elapsed > 0 else None


def job_progress(session: Session, job_id: int, *, error_limit: int = 20) -> JobProgress:
    """Counts per step, and dies per second and ETA from the items' start and finish times.

    The rate is finished dies over the window from the first item start to the last item finish, so
    it reads what the runner achieves (a pause while nothing runs does count against it).
    """
    job = get_job(session, job_id)
    counts = repo.item_counts(session, job_id)
    timing = repo.step_timing(session, job_id)
    steps = []
    for step in JobParams.from_json(job.params).steps:
        by_state = {state: n for (s, state), n in counts.items() if s == step}
        t = timing.get(step)
        steps.append(
            StepProgress(
                step=step,
                total=sum(by_state.values()),
                queued=by_state.get(JobState.queued, 0),
                running=by_state.get(JobState.running, 0),
                succeeded=by_state.get(JobState.succeeded, 0),
                failed=by_state.get(JobState.failed, 0),
                cancelled=by_state.get(JobState.cancelled, 0),
                dies_per_s=None if t is None else _rate(t.n_finished, t.first_started_at, t.last_finished_at),
            )
        )
    total_dies, open_dies = repo.die_counts(session, job_id)
    starts = [t.first_started_at for t in timing.values() if t.first_started_at is not None]
    ends = [t.last_finished_at for t in timing.values() if t.last_finished_at is not None]
    rate = _rate(total_dies - open_dies, min(starts, default=None), max(ends, default=None))
    if job.state in TERMINAL_STATES:
        eta: float | None = 0.0
    else:
        eta = open_dies / rate if rate else None
    return JobProgress(
        job=job,
        steps=steps,
        total_dies=total_dies,
        open_dies=open_dies if job.state not in TERMINAL_STATES else 0,
        dies_per_s=rate,
        eta_s=eta,
        errors=repo.item_errors(session, job_id, limit=error_limit),
    )


def get_job(session: Session, job_id: int) -> Job:
    job = repo.get(session, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    return job


def list_jobs(
    session: Session, *, state: str | None, lot_id: str | None, limit: int, offset: int
) -> tuple[list[Job], int]:
    return repo.search(session, state=state, lot_id=lot_id, limit=limit, offset=offset)


def cancel_job(session: Session, job_id: int, *, actor: str) -> Job:
    """Cancel a queued or running job: queued items are cancelled at once, running dies finish the
    step they are in and stop there."""
    job = get_job(session, job_id)
    if not repo.cancel(session, job_id, utcnow()):
        raise ConflictError(f"job {job_id} is already {job.state}", code="job_finished")
    session.refresh(job)
    audit.add(session, actor=actor, action="job.cancel", target=f"job:{job_id}", details={})
    return job


def open_job_ids(factory: sessionmaker[Session], *, state: str | None = None) -> list[int]:
    with session_scope(factory) as s:
        return repo.open_job_ids(s, state=state)


def open_die_ids(factory: sessionmaker[Session], job_id: int) -> list[int]:
    with session_scope(factory) as s:
        return repo.open_die_ids(s, job_id)


def chunks(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


# ------------------------------------------------------------------------------------- execution
@dataclass(frozen=True)
class StepCall:
    """One step on one die, as the step functions receive it (IDs and the job's parameters only)."""

    job_id: int
    die_id: int
    ecid: str
    step: str
    model: str | None
    force: bool
    item_id: int | None = None
    attempt: int | None = None
    """The job item and its attempt (the attempts it had when claimed, plus one): the key of the
    records the step writes, unchanged when a chunk is redelivered after a crash."""
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


@dataclass(frozen=True)
class ChunkResult:
    """``processed``: dies this call worked on; ``busy``: dies another live worker holds (try again
    after the lease); ``stopped``: the job is no longer open (cancelled, finished or gone)."""

    processed: list[int] = field(default_factory=list)
    busy: list[int] = field(default_factory=list)
    stopped: bool = False


def _describe(e: BaseException) -> str:
    code = getattr(e, "code", None)
    return f"{code or type(e).__name__}: {e}"


def _run_step(ctx: ExecutionContext, call: StepCall, retry: RetryPolicy) -> tuple[str, str | None, int]:
    """Run one step with the retry policy; returns (item state, error, attempts)."""
    fn = ctx.steps.for_step(call.step)
    for attempt in range(1, retry.max_attempts + 1):
        try:
            fn(call)
            return JobState.succeeded, None, attempt
        except TRANSIENT_ERRORS as e:
            if attempt < retry.max_attempts:
                log.info("%s %s: %s; retry %d", call.ecid, call.step, _describe(e), attempt)
                ctx.sleep(retry.delay_s(attempt))
                continue
            reason = f"{call.step}: {_describe(e)} (gave up after {attempt} attempts)"
            ctx.steps.alarm(replace(call, error=e), reason, False)
            return JobState.failed, f"alarm: {reason}", attempt
        except DieFault as e:
            reason = f"{call.step}: {_describe(e)}"
            ctx.steps.alarm(replace(call, error=e), reason, True)
            return JobState.failed, f"die fault: {reason}", attempt
        except HardwareError as e:
            reason = f"{call.step}: {_describe(e)}"
            ctx.steps.alarm(replace(call, error=e), reason, False)
            return JobState.failed, f"alarm: {reason}", attempt
        except AppError as e:
            return JobState.failed, f"{call.step}: {e.code}: {e.message}", attempt
        except OperationalError:
            raise  # the database, not the die: the chunk fails, its claims go back, it runs again
        except Exception as e:
            log.exception("%s %s: unexpected error", call.ecid, call.step)
            return JobState.failed, f"{call.step}: internal error: {type(e).__name__}: {e}", attempt
    raise AssertionError("unreachable")


def _effective_force(s: Session, params: JobParams, job: Job, die_id: int, step: str) -> bool:
    """``force`` redoes work done before the job, never work this job already did: that keeps a
    forced job exactly-once when a chunk is redelivered after a crash."""
    if not params.force:
        return False
    if step == "characterize":
        return not repo.has_signature_since(s, die_id, job.created_at)
    if step == "functional-test" and params.model_id is not None:
        return not repo.has_test_since(s, die_id, params.model_id, job.created_at)
    return False


def _process_die(
    ctx: ExecutionContext,
    token: str,
    job: Job,
    params: JobParams,
    die_id: int,
    ecid: str,
    should_stop: Callable[[], bool],
) -> Literal["done", "none", "cancelled", "lost"]:
    with session_scope(ctx.factory) as s:
        now = utcnow()
        claimed = repo.claim_die(
            s,
            job_id=job.id,
            die_id=die_id,
            owner=token,
            now=now,
            stale_before=now - timedelta(seconds=ctx.lease_s),
        )
        if not claimed:
            return "none"
        states = repo.die_states(s, job.id, die_id)
        attempts_before = repo.item_attempts(s, [item_id for item_id, _ in claimed])
    item_of = {step: item_id for item_id, step in claimed}
    todo = [step for step in params.steps if step in item_of]
    try:
        return _run_die(
            ctx, token, job, params, die_id, ecid, should_stop, states, item_of, todo, attempts_before
        )
    except BaseException:
        # The chunk fails (the database went away, the process is told to exit): hand the die's
        # unfinished items back at once rather than after the lease, if the database lets us.
        try:
            with session_scope(ctx.factory) as s:
                repo.release(s, item_ids=list(item_of.values()), owner=token, now=utcnow())
        except Exception:
            log.warning("job %d die %s: could not release the claim", job.id, ecid, exc_info=True)
        raise


def _run_die(
    ctx: ExecutionContext,
    token: str,
    job: Job,
    params: JobParams,
    die_id: int,
    ecid: str,
    should_stop: Callable[[], bool],
    states: dict[str, str],
    item_of: dict[str, int],
    todo: list[str],
    attempts_before: dict[int, int],
) -> Literal["done", "cancelled", "lost"]:
    # The claim just succeeded, so the job was open then; after each step the job's state is read
    # in the transaction that records the step (four transactions per die of three steps).
    job_state: str | None = JobState.running
    for i, step in enumerate(todo):
        if job_state == JobState.cancelled or should_stop():
            with session_scope(ctx.factory) as s:
                now = utcnow()
                if job_state == JobState.cancelled:
                    for rest in todo[i:]:
                        repo.finish_item(
                            s,
                            item_id=item_of[rest],
                            owner=token,
                            state=JobState.cancelled,
                            error=None,
                            attempts=0,
                            now=now,
                        )
                else:
                    repo.release(s, item_ids=[item_of[r] for r in todo[i:]], owner=token, now=now)
            return "cancelled"
        failed_before = next(
            (
                p
                for p in params.steps[: params.steps.index(step)]
                if states.get(p) in (JobState.failed, JobState.cancelled)
            ),
            None,
        )
        state: str
        error: str | None
        if failed_before is not None:
            state, error, attempts = JobState.failed.value, f"not run: {failed_before} failed", 0
        else:
            force = False
            if params.force:
                with session_scope(ctx.factory) as s:
                    force = _effective_force(s, params, job, die_id, step)
            item_id = item_of[step]
            call = StepCall(
                job.id, die_id, ecid, step, params.model, force, item_id, attempts_before.get(item_id, 0) + 1
            )
            state, error, attempts = _run_step(ctx, call, params.retry)
        with session_scope(ctx.factory) as s:
            kept = repo.finish_item(
                s,
                item_id=item_of[step],
                owner=token,
                state=state,
                error=error,
                attempts=attempts,
                now=utcnow(),
            )
            job_state = repo.state_of(s, job.id)
        if not kept:
            # Our lease expired and another worker reclaimed the die: leave the rest to it.
            log.warning("job %d die %s: lost the claim during %s", job.id, ecid, step)
            return "lost"
        states[step] = state
    return "done"


def process_chunk(
    ctx: ExecutionContext,
    job_id: int,
    die_ids: Sequence[int],
    *,
    should_stop: Callable[[], bool] = lambda: False,
) -> ChunkResult:
    """Process the open items of ``die_ids`` in job ``job_id``, die by die, step by step.

    Safe to call twice with the same arguments, concurrently or after a crash: each die's items are
    claimed atomically, finished items are skipped, and the step functions are idempotent.
    """
    with session_scope(ctx.factory) as s:
        job = repo.get(s, job_id)
        if job is None or job.state not in OPEN_STATES:
            return ChunkResult(stopped=True)
        repo.mark_started(s, job_id, utcnow())
        ecids = repo.die_ecids(s, die_ids)
    params = JobParams.from_json(job.params)
    ctx.pin_numerics()
    processed: list[int] = []
    unclaimed: list[int] = []
    stopped = False
    assert ctx.heartbeat is not None
    token = ctx.new_claim()
    ctx.heartbeat.track(token, job_id)
    try:
        for die_id in die_ids:
            if die_id not in ecids:
                continue
            if should_stop():
                stopped = True
                break
            outcome = _process_die(ctx, token, job, params, die_id, ecids[die_id], should_stop)
            if outcome == "cancelled":
                stopped = True
                break
            if outcome == "none":
                unclaimed.append(die_id)
            else:
                processed.append(die_id)
    finally:
        ctx.heartbeat.untrack(token)
    with session_scope(ctx.factory) as s:
        busy = repo.held_elsewhere(s, job_id=job_id, die_ids=unclaimed, owner=token)
        if repo.finish_if_done(s, job_id, utcnow()):
            log.info("job %d finished", job_id)
    return ChunkResult(processed=processed, busy=busy, stopped=stopped)

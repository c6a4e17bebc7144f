"""Creating, reading and cancelling jobs; the open jobs and dies a runner hands out."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow
from app.db.repositories import audit
from app.db.repositories import jobs as repo
from app.db.session import session_scope
from app.db.tables import Job, JobState
from app.errors import ConflictError, InvalidInputError, NotFoundError
from app.services import lots as lots_service
from app.services import models as models_service
from app.services.jobs.params import (
    JOB_KIND,
    NEEDS_MODEL,
    TERMINAL_STATES,
    DieSelection,
    JobParams,
    RetryPolicy,
    in_sample,
    ordered_steps,
    parse_model_ref,
)


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


def stalled_job_ids(factory: sessionmaker[Session], *, lease_s: float, quiet_s: float) -> list[int]:
    """Queued or running jobs with no live claim (no heartbeat within ``lease_s``) and no item
    activity for ``quiet_s``: whatever was meant to run them (a broker message, an in-memory chunk) is
    gone. Sending their open dies again is safe: the claims keep it exactly-once."""
    now = utcnow()
    with session_scope(factory) as s:
        return repo.stalled_job_ids(
            s, live_after=now - timedelta(seconds=lease_s), quiet_before=now - timedelta(seconds=quiet_s)
        )


def record_resend(factory: sessionmaker[Session], job_id: int, *, dies: int, runner: str) -> None:
    """Audit what the supervisor did: a stalled job's open dies were sent again."""
    with session_scope(factory) as s:
        audit.add(
            s,
            actor="supervisor",
            action="job.resend",
            target=f"job:{job_id}",
            details={"dies": dies, "runner": runner},
        )


def chunks(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]

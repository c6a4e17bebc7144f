"""Batch jobs and their items: creation, atomic claims with leases, progress counts.

Claims are conditional UPDATEs (``state='queued'``, or ``'running'`` with a heartbeat older than the
lease), so two workers never hold the same item; on PostgreSQL the candidate rows are first locked
with ``FOR UPDATE SKIP LOCKED`` so a claimer never waits behind another claimer's transaction. SQLite
serializes writers (``BEGIN IMMEDIATE``), which makes the plain conditional UPDATE atomic there.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session

from app.db.tables import Die, Job, JobItem, JobState, Signature, TestResult, Wafer

OPEN_STATES = (JobState.queued.value, JobState.running.value)


# ------------------------------------------------------------------------------------------ jobs
def add(session: Session, job: Job) -> Job:
    session.add(job)
    session.flush()
    return job


def add_items(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Bulk-insert items given as ``{"job_id", "die_id", "step", "state", "updated_at"}`` rows."""
    if rows:
        session.execute(insert(JobItem), list(rows))


def get(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def state_of(session: Session, job_id: int) -> str | None:
    return session.scalar(select(Job.state).where(Job.id == job_id))


def search(
    session: Session, *, state: str | None, lot_id: str | None, limit: int, offset: int
) -> tuple[list[Job], int]:
    """Newest first; returns (page, total matching)."""
    where = []
    if state is not None:
        where.append(Job.state == state)
    if lot_id is not None:
        where.append(Job.lot_id == lot_id)
    total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    page = session.scalars(
        select(Job).where(*where).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
    ).all()
    return list(page), total


def open_job_ids(session: Session, *, state: str | None = None) -> list[int]:
    """Jobs not finished yet (queued or running), oldest first."""
    states = OPEN_STATES if state is None else (state,)
    return list(session.scalars(select(Job.id).where(Job.state.in_(states)).order_by(Job.id)))


def mark_started(session: Session, job_id: int, now: datetime) -> bool:
    """queued -> running (once)."""
    done = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.queued)
        .values(state=JobState.running, started_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def finish_if_done(session: Session, job_id: int, now: datetime) -> bool:
    """running -> succeeded when no item is queued or running any more."""
    still_open = exists().where(JobItem.job_id == job_id, JobItem.state.in_(OPEN_STATES))
    done = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.running, ~still_open)
        .values(state=JobState.succeeded, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def cancel(session: Session, job_id: int, now: datetime) -> bool:
    """Cancel an open job and its queued items (running items finish the step they are in)."""
    done = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(OPEN_STATES))
        .values(state=JobState.cancelled, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    if not done.rowcount:  # type: ignore[attr-defined]
        return False
    session.execute(
        update(JobItem)
        .where(JobItem.job_id == job_id, JobItem.state == JobState.queued)
        .values(state=JobState.cancelled, finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return True


# ----------------------------------------------------------------------------------------- items
def open_die_ids(session: Session, job_id: int) -> list[int]:
    """Dies of the job with an item still queued or running, in die order."""
    stmt = (
        select(JobItem.die_id)
        .where(JobItem.job_id == job_id, JobItem.state.in_(OPEN_STATES))
        .group_by(JobItem.die_id)
        .order_by(JobItem.die_id)
    )
    return list(session.scalars(stmt))


def claim_die(
    session: Session, *, job_id: int, die_id: int, owner: str, now: datetime, stale_before: datetime
) -> list[tuple[int, str]]:
    """Claim the die's open items of the job: queued ones, and running ones whose heartbeat is older
    than ``stale_before`` (their worker died). Returns the claimed (item id, step)."""
    claimable = and_(
        JobItem.job_id == job_id,
        JobItem.die_id == die_id,
        or_(
            JobItem.state == JobState.queued,
            and_(JobItem.state == JobState.running, JobItem.heartbeat_at < stale_before),
        ),
    )
    target: ColumnElement[bool] = claimable
    if session.get_bind().dialect.name == "postgresql":
        locked = select(JobItem.id).where(claimable).with_for_update(skip_locked=True)
        target = JobItem.id.in_(locked.scalar_subquery())
    rows = session.execute(
        update(JobItem)
        .where(target)
        .values(
            state=JobState.running,
            claimed_by=owner,
            heartbeat_at=now,
            started_at=now,
            finished_at=None,
            updated_at=now,
        )
        .returning(JobItem.id, JobItem.step)
        .execution_options(synchronize_session=False)
    )
    return [(int(i), str(s)) for i, s in rows]


def held_elsewhere(session: Session, *, job_id: int, die_ids: Collection[int], owner: str) -> list[int]:
    """Dies with an item running under another claim than ``owner`` (live or not yet expired)."""
    if not die_ids:
        return []
    stmt = (
        select(JobItem.die_id)
        .where(
            JobItem.job_id == job_id,
            JobItem.die_id.in_(die_ids),
            JobItem.state == JobState.running,
            JobItem.claimed_by != owner,
        )
        .group_by(JobItem.die_id)
        .order_by(JobItem.die_id)
    )
    return list(session.scalars(stmt))


def die_states(session: Session, job_id: int, die_id: int) -> dict[str, str]:
    """step -> state of the die's items in the job."""
    rows = session.execute(
        select(JobItem.step, JobItem.state).where(JobItem.job_id == job_id, JobItem.die_id == die_id)
    )
    return {str(step): str(state) for step, state in rows}


def item_attempts(session: Session, item_ids: Collection[int]) -> dict[int, int]:
    """item id -> attempts recorded so far."""
    if not item_ids:
        return {}
    rows = session.execute(select(JobItem.id, JobItem.attempts).where(JobItem.id.in_(list(item_ids))))
    return {int(i): int(a) for i, a in rows}


def finish_item(
    session: Session,
    *,
    item_id: int,
    owner: str,
    state: str,
    error: str | None,
    attempts: int,
    now: datetime,
) -> bool:
    """Record the outcome of a claimed item; False when the claim was lost (lease expired)."""
    done = session.execute(
        update(JobItem)
        .where(JobItem.id == item_id, JobItem.claimed_by == owner, JobItem.state == JobState.running)
        .values(
            state=state,
            error=error,
            attempts=JobItem.attempts + attempts,
            finished_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def heartbeat(session: Session, *, owners: Collection[str], job_ids: Collection[int], now: datetime) -> int:
    """Refresh the lease of every item of ``job_ids`` running under one of the claims ``owners``;
    returns how many."""
    if not job_ids or not owners:
        return 0
    done = session.execute(
        update(JobItem)
        .where(
            JobItem.job_id.in_(list(job_ids)),
            JobItem.state == JobState.running,
            JobItem.claimed_by.in_(list(owners)),
        )
        .values(heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(done.rowcount)  # type: ignore[attr-defined]


def release(session: Session, *, item_ids: Collection[int], owner: str, now: datetime) -> int:
    """Give claimed items back to the queue (the worker is stopping before it ran them)."""
    if not item_ids:
        return 0
    done = session.execute(
        update(JobItem)
        .where(JobItem.id.in_(list(item_ids)), JobItem.claimed_by == owner, JobItem.state == JobState.running)
        .values(state=JobState.queued, claimed_by=None, heartbeat_at=None, started_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(done.rowcount)  # type: ignore[attr-defined]


# -------------------------------------------------------------------------------------- progress
def item_counts(session: Session, job_id: int) -> dict[tuple[str, str], int]:
    """(step, state) -> number of items."""
    rows = session.execute(
        select(JobItem.step, JobItem.state, func.count())
        .where(JobItem.job_id == job_id)
        .group_by(JobItem.step, JobItem.state)
    )
    return {(str(step), str(state)): int(n) for step, state, n in rows}


def die_counts(session: Session, job_id: int) -> tuple[int, int]:
    """(dies in the job, dies with an item still queued or running)."""
    total = session.scalar(select(func.count(func.distinct(JobItem.die_id))).where(JobItem.job_id == job_id))
    still_open = session.scalar(
        select(func.count(func.distinct(JobItem.die_id))).where(
            JobItem.job_id == job_id, JobItem.state.in_(OPEN_STATES)
        )
    )
    return int(total or 0), int(still_open or 0)


@dataclass(frozen=True)
class StepTiming:
    step: str
    n_finished: int
    first_started_at: datetime | None
    last_finished_at: datetime | None


def step_timing(session: Session, job_id: int) -> dict[str, StepTiming]:
    """Per step, over the items that finished (succeeded or failed): count, first start, last finish."""
    rows = session.execute(
        select(JobItem.step, func.count(), func.min(JobItem.started_at), func.max(JobItem.finished_at))
        .where(
            JobItem.job_id == job_id,
            JobItem.state.in_((JobState.succeeded, JobState.failed)),
        )
        .group_by(JobItem.step)
    )
    return {str(s): StepTiming(str(s), int(n), t0, t1) for s, n, t0, t1 in rows}


def item_errors(session: Session, job_id: int, *, limit: int) -> list[tuple[str, str, int, str]]:
    """(ECID, step, attempts, error) of the job's failed items, most recent first."""
    rows = session.execute(
        select(Die.ecid, JobItem.step, JobItem.attempts, JobItem.error)
        .join(Die, Die.id == JobItem.die_id)
        .where(JobItem.job_id == job_id, JobItem.state == JobState.failed)
        .order_by(JobItem.finished_at.desc(), JobItem.id.desc())
        .limit(limit)
    )
    return [(str(e), str(s), int(a), str(err or "")) for e, s, a, err in rows]


# ------------------------------------------------------------------------------------------ dies
def lot_dies(
    session: Session, lot_id: str, *, wafer: int | None = None, ecids: Collection[str] | None = None
) -> list[tuple[int, str]]:
    """(die id, ECID) of the lot's dies, optionally of one wafer or of the given ECIDs, in die order."""
    stmt = select(Die.id, Die.ecid).join(Wafer, Wafer.id == Die.wafer_id).where(Wafer.lot_id == lot_id)
    if wafer is not None:
        stmt = stmt.where(Wafer.number == wafer)
    if ecids is not None:
        stmt = stmt.where(Die.ecid.in_(list(ecids)))
    return [(int(i), str(e)) for i, e in session.execute(stmt.order_by(Die.id))]


def die_ecids(session: Session, die_ids: Collection[int]) -> dict[int, str]:
    if not die_ids:
        return {}
    return {int(i): str(e) for i, e in session.execute(select(Die.id, Die.ecid).where(Die.id.in_(die_ids)))}


def has_signature_since(session: Session, die_id: int, since: datetime) -> bool:
    """Whether the die's current signature was recorded at or after ``since``."""
    stmt = select(Signature.id).where(
        Signature.die_id == die_id, Signature.is_current, Signature.created_at >= since
    )
    return session.scalar(stmt.limit(1)) is not None


def has_test_since(session: Session, die_id: int, model_id: int, since: datetime) -> bool:
    """Whether the die has a functional test with the model recorded at or after ``since``."""
    stmt = select(TestResult.id).where(
        TestResult.die_id == die_id, TestResult.model_id == model_id, TestResult.created_at >= since
    )
    return session.scalar(stmt.limit(1)) is not None

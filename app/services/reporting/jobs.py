"""The job views: one job's progress per step and its latest item errors; the most recent jobs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.db.repositories import reporting as repo
from app.db.tables import JobState
from app.errors import NotFoundError

TERMINAL_STATES = frozenset(
    {JobState.succeeded, JobState.completed_with_failures, JobState.failed, JobState.cancelled}
)


@dataclass(frozen=True)
class StepProgress:
    step: str
    state: str
    count: int


@dataclass(frozen=True)
class JobItemError:
    ecid: str
    step: str
    attempts: int
    error: str


@dataclass(frozen=True)
class JobReport:
    id: int
    kind: str
    state: str
    terminal: bool
    params: dict[str, Any]
    counters: dict[str, Any]
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    n_items: int
    n_done: int
    progress: float | None
    items: list[StepProgress]
    errors: list[JobItemError]


def job_report(session: Session, job_id: int) -> JobReport:
    job = repo.get_job(session, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    counts = repo.job_item_counts(session, job_id)
    n_items = sum(counts.values())
    n_done = sum(n for (_, state), n in counts.items() if state in TERMINAL_STATES)
    return JobReport(
        id=job.id,
        kind=job.kind,
        state=job.state,
        terminal=job.state in TERMINAL_STATES,
        params=dict(job.params),
        counters=dict(job.counters or {}),
        created_by=job.created_by,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        n_items=n_items,
        n_done=n_done,
        progress=n_done / n_items if n_items else (1.0 if job.state in TERMINAL_STATES else None),
        items=[StepProgress(step, state, n) for (step, state), n in sorted(counts.items())],
        errors=[JobItemError(*e) for e in repo.job_item_errors(session, job_id, limit=20)],
    )


@dataclass(frozen=True)
class JobSummary:
    id: int
    kind: str
    state: str
    created_by: str
    created_at: datetime
    finished_at: datetime | None


def recent_jobs(session: Session, *, limit: int) -> list[JobSummary]:
    return [
        JobSummary(j.id, j.kind, j.state, j.created_by, j.created_at, j.finished_at)
        for j in repo.recent_jobs(session, limit=limit)
    ]

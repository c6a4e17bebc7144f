"""Job progress, errors, and the lot a job is linked to through its parameters."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from app.db.tables import Die, Job, JobItem, JobState
from app.errors import NotFoundError
from app.services.reporting.jobs import job_report
from app.services.reporting.lots import list_lots


def test_job_progress_and_lot_link_through_params(session: Session, lot: dict[str, Die]) -> None:
    job = Job(kind="calibrate", state=JobState.running, params={"lot": "L2"}, created_by="t")
    session.add(job)
    session.flush()
    states = [JobState.succeeded, JobState.failed, JobState.running, JobState.queued]
    for die, state in zip(lot.values(), states, strict=True):
        session.add(
            JobItem(
                job_id=job.id,
                die_id=die.id,
                step="characterize",
                state=state,
                error="contact lost" if state == JobState.failed else None,
                attempts=3 if state == JobState.failed else 1,
            )
        )
    session.flush()
    r = job_report(session, job.id)
    assert (r.n_items, r.n_done, r.progress, r.terminal) == (4, 2, 0.5, False)
    assert [(e.ecid, e.error) for e in r.errors] == [(lot["d1"].ecid, "contact lost")]
    (row,) = list_lots(session, limit=10, offset=0).items
    assert row.latest_job is not None and row.latest_job.job_id == job.id
    with pytest.raises(NotFoundError):
        job_report(session, job.id + 1)

"""/v1/lots/{lot}/calibrate and /v1/jobs: start calibration jobs, follow and cancel them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from app.api.deps import EngineerAccess, PageDep, ReadAccess, SessionDep
from app.api.idempotency import IdempotencyDep
from app.api.schemas.common import INT32_MAX, NOT_FOUND, Page, error_response_doc
from app.api.schemas.jobs import CalibrateIn, JobOut, JobProgressOut
from app.db.tables import JobState
from app.jobs.runner import JobRunner
from app.services import jobs

router = APIRouter(tags=["jobs"])

LotIdPath = Annotated[str, Path(max_length=32, examples=["LOT0001"])]
JobIdPath = Annotated[int, Path(ge=1, le=INT32_MAX, examples=[12])]
JOB_FINISHED: dict[int | str, dict[str, Any]] = {
    409: error_response_doc("The job already ended", "job_finished", "job 12 is already succeeded")
}


def get_runner(request: Request) -> JobRunner:
    runner: JobRunner = request.app.state.job_runner
    return runner


RunnerDep = Annotated[JobRunner, Depends(get_runner)]


@router.post("/lots/{lot_id}/calibrate", status_code=202, response_model=JobOut, responses=NOT_FOUND)
def calibrate_lot(
    lot_id: LotIdPath,
    body: CalibrateIn,
    session: SessionDep,
    principal: EngineerAccess,
    idem: IdempotencyDep,
    runner: RunnerDep,
    background: BackgroundTasks,
) -> JSONResponse:
    """Start a job that runs the steps on the selected dies of the lot; 202 with the job.

    Follow it at `GET /v1/jobs/{id}`. Dies that already have a current signature are not
    characterized again unless `force` (so `steps: ["compensate"]`, or a new model version with
    `force: false`, costs no tester time).
    """

    def action() -> JobOut:
        job = jobs.create_calibration_job(
            session,
            lot_id=lot_id,
            steps=body.steps,
            model=body.model,
            dies=body.selection(),
            force=body.force,
            functional_test_sample=body.functional_test_sample,
            actor=principal.actor,
        )
        # Background tasks run after the response, i.e. after this request's transaction committed.
        background.add_task(runner.submit, job.id)
        return JobOut.of(job)

    return idem.respond(body, action, status_code=202)


@router.get("/jobs")
def list_jobs(
    session: SessionDep,
    _: ReadAccess,
    page: PageDep,
    state: Annotated[JobState | None, Query(examples=["running"])] = None,
    lot_id: Annotated[str | None, Query(max_length=32, examples=["LOT0001"])] = None,
) -> Page[JobOut]:
    """Jobs, newest first, optionally filtered by state and lot."""
    items, total = jobs.list_jobs(session, state=state, lot_id=lot_id, limit=page.limit, offset=page.offset)
    return Page(items=[JobOut.of(j) for j in items], total=total, limit=page.limit, offset=page.offset)


@router.get("/jobs/{job_id}", responses=NOT_FOUND)
def get_job(job_id: JobIdPath, session: SessionDep, _: ReadAccess) -> JobProgressOut:
    """The job with done/failed/total per step, dies per second and ETA."""
    return JobProgressOut.of_progress(jobs.job_progress(session, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses={**NOT_FOUND, **JOB_FINISHED})
def cancel_job(
    job_id: JobIdPath, session: SessionDep, principal: EngineerAccess, idem: IdempotencyDep
) -> JSONResponse:
    """Cancel a queued or running job: queued dies are not started, dies in progress stop after
    the step they are in. 409 `job_finished` when it already ended."""
    return idem.respond(
        {"job_id": job_id},
        lambda: JobOut.of(jobs.cancel_job(session, job_id, actor=principal.actor)),
        status_code=200,
    )

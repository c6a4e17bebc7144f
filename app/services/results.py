"""Storing a functional test's measured results: before calibration (when measured) and after, in the
caller's transaction, the calibrated one under its batch job item and attempt (one record per pair;
see :mod:`app.services.alarms` for the records of tests that measured nothing)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from app.calibration.functional import GradeRule, grade
from app.calibration.pipeline import FunctionalResult
from app.db.repositories import test_results
from app.db.tables import TestResult
from app.services import provenance as provenance_service
from app.services.alarms import AlarmRecordedError, JobAttempt
from app.services.hardware import TesterProvenance


def ensure_not_recorded(s: Session, job: JobAttempt) -> None:
    """:class:`AlarmRecordedError` when (job item, attempt) already has a record (an alarm, or a result
    a killed worker stored before its item was updated)."""
    done = test_results.for_job_attempt(s, job.item_id, job.attempt)
    if done is not None:
        raise AlarmRecordedError(
            f"job item {job.item_id} attempt {job.attempt} is already recorded "
            f"(soft bin {done.soft_bin}: {done.reason or 'measured'}); this result is not stored"
        )


def store_measured(
    s: Session,
    die_id: int,
    model_id: int,
    image_id: int,
    before: FunctionalResult | None,
    after: FunctionalResult,
    bins: tuple[int, int],
    grades: Sequence[GradeRule],
    prov: TesterProvenance,
    job: JobAttempt | None,
    probe_retries: int,
) -> TestResult:
    """The measured results (before calibration when measured, then after) in the caller's transaction;
    the calibrated one carries the job item and attempt."""
    prov_id = provenance_service.record(s, prov).id
    if before is not None:
        hb, sb, _ = grade(before.accuracy, pass_grades=grades)
        test_results.add(
            s,
            TestResult(
                die_id=die_id,
                model_id=model_id,
                image_id=None,
                accuracy=before.accuracy,
                hard_bin=hb,
                soft_bin=sb,
                test_time_s=before.tester_s,
                retries=before.retries,
                provenance_id=prov_id,
            ),
        )
    hard, soft = bins
    return test_results.add(
        s,
        TestResult(
            die_id=die_id,
            model_id=model_id,
            image_id=image_id,
            accuracy=after.accuracy,
            hard_bin=hard,
            soft_bin=soft,
            test_time_s=after.tester_s,
            retries=probe_retries + after.retries,
            provenance_id=prov_id,
            job_item_id=None if job is None else job.item_id,
            attempt=None if job is None else job.attempt,
        ),
    )

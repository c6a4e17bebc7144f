"""Alarms and die faults: the record of a die that could not be tested, and of what happened instead.

A tester alarm (soft bin 0: a timeout or lost contact that outlasted the retries, a protocol error, a
lost tester) means "retest": it is not a die verdict. A die fault (``DieFault``: shorts, no
response) is a verdict, the gross-defect bin. Either way nothing was measured, so the record carries
no accuracy and no test time (NULL), only the bins, the step, the error's code and reason, and the
test site that raised it when known (:func:`on_site` notes it on the error as it propagates).

A batch job writes at most one record per (job item, attempt) (unique constraint, and an "already
recorded" answer instead of a second row), and a job item that has an alarm recorded is finished
with it (:func:`ensure_not_alarmed`): a worker killed after the alarm's commit but before the item's
update leaves one bin-0 row, never two, never a bin-0 row next to a pass. A retest is a new job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.calibration.functional import grade
from app.db.repositories import audit, dies, models, test_results
from app.db.session import session_scope
from app.db.tables import TestResult
from app.errors import AppError, InvalidInputError, NotFoundError
from app.services import provenance as provenance_service
from app.services.hardware import DriverPool, TesterProvenance, TesterSite
from hardware.driver import DieAddress, HardwareError

log = logging.getLogger(__name__)

Db = Session | sessionmaker[Session]

_SITE_ATTR = "cimcal_site_provenance"


class AlarmRecordedError(AppError):
    """The job item already ended in an alarm: its die is not tested again under that item."""

    status_code = 409
    code = "alarm_recorded"


@dataclass(frozen=True)
class JobAttempt:
    """The job item a record belongs to and the item's attempt number."""

    item_id: int
    attempt: int


@dataclass(frozen=True)
class AlarmOutcome:
    """The stored record (``result_id`` None: no model, so only the audit event was written);
    ``created`` False when the same (job item, attempt) was already recorded."""

    ecid: str
    model: str | None
    result_id: int | None
    hard_bin: int
    soft_bin: int
    label: str
    step: str
    code: str | None
    reason: str
    site: int | None
    created: bool


# ------------------------------------------------------------------------------------- test sites
def _site_provenance(site: TesterSite) -> TesterProvenance | None:
    try:
        return site.provenance()
    except HardwareError:  # the tester does not even answer info(): the site is all we know
        return None


@contextmanager
def on_site(pool: DriverPool) -> Iterator[TesterSite]:
    """``pool.acquire()``, noting on a hardware error raised inside the provenance of the site that
    raised it (read back with :func:`site_of` when the alarm is recorded)."""
    with pool.acquire() as site:
        try:
            yield site
        except HardwareError as e:
            if getattr(e, _SITE_ATTR, None) is None:
                setattr(e, _SITE_ATTR, _site_provenance(site))
            raise


def site_of(error: BaseException | None) -> TesterProvenance | None:
    """The provenance of the test site that raised ``error`` (None: not raised on a known site)."""
    prov = getattr(error, _SITE_ATTR, None)
    return prov if isinstance(prov, TesterProvenance) else None


# ---------------------------------------------------------------------------------------- records
def _scope(db: Db) -> AbstractContextManager[Session]:
    return nullcontext(db) if isinstance(db, Session) else session_scope(db)


def ensure_not_alarmed(db: Db, item_id: int) -> None:
    """Raise :class:`AlarmRecordedError` when the job item already has an alarm or die fault recorded."""
    with _scope(db) as s:
        row = test_results.alarm_of_item(s, item_id)
        if row is not None:
            raise AlarmRecordedError(
                f"already recorded for this job item (attempt {row.attempt}): {row.reason}",
                details={"soft_bin": row.soft_bin, "attempt": row.attempt},
            )


def _outcome(
    ecid: str, model_ref: str | None, row: TestResult, label: str, created: bool, site: int | None
) -> AlarmOutcome:
    return AlarmOutcome(
        ecid=ecid,
        model=model_ref,
        result_id=row.id,
        hard_bin=row.hard_bin,
        soft_bin=row.soft_bin,
        label=label,
        step=row.step or "",
        code=row.alarm_code,
        reason=row.reason or "",
        site=site,
        created=created,
    )


def record_alarm(
    db: Db,
    ecid: str,
    model_ref: str | None,
    step: str,
    reason: str,
    *,
    die_fault: bool = False,
    code: str | None = None,
    provenance: TesterProvenance | None = None,
    job: JobAttempt | None = None,
    actor: str = "system",
) -> AlarmOutcome:
    """Bin a die that could not be tested: bin 0 (tester alarm) or the die-fault bin, with the step,
    the error's ``code`` and ``reason``, the site's ``provenance`` when known, no accuracy and no
    test time. With ``job``, once per (job item, attempt): a repeated call returns the stored record.
    Without a model there is no per-model record: only the audit event."""
    hard, soft, label = grade(None, gross_defect=die_fault, tester_alarm=not die_fault)
    site = None if provenance is None else provenance.site
    try:
        DieAddress.from_ecid(ecid)
    except ValueError as e:
        raise InvalidInputError(str(e), code="invalid_ecid") from e
    try:
        with _scope(db) as s, s.begin_nested():
            die = dies.get_by_ecid(s, ecid)
            if die is None:
                raise NotFoundError(f"no die {ecid!r}; register its lot first")
            model = None
            if model_ref:
                name, _, version = model_ref.partition("@")
                model = models.get(s, name, version)
                if model is None:
                    raise NotFoundError(f"no model {model_ref!r}", code="model_not_found")
            if job is not None:
                done = test_results.for_job_attempt(s, job.item_id, job.attempt)
                if done is not None:
                    return _outcome(ecid, model_ref, done, label, False, site)
            row = None
            if model is not None:
                row = test_results.add(
                    s,
                    TestResult(
                        die_id=die.id,
                        model_id=model.id,
                        image_id=None,
                        accuracy=None,
                        hard_bin=hard,
                        soft_bin=soft,
                        test_time_s=None,
                        reason=f"{step}: {reason}",
                        alarm_code=code,
                        step=step,
                        provenance_id=None
                        if provenance is None
                        else provenance_service.record(s, provenance).id,
                        job_item_id=None if job is None else job.item_id,
                        attempt=None if job is None else job.attempt,
                    ),
                )
            audit.add(
                s,
                actor=actor,
                action="die.alarm",
                target=ecid,
                details={
                    "step": step,
                    "reason": reason,
                    "code": code,
                    "soft_bin": soft,
                    "label": label,
                    "site": site,
                    "job_item": None if job is None else job.item_id,
                    "attempt": None if job is None else job.attempt,
                },
            )
    except IntegrityError:
        if job is None:
            raise
        # A concurrent writer stored this (job item, attempt) first: that record stands.
        with _scope(db) as s:
            winner = test_results.for_job_attempt(s, job.item_id, job.attempt)
            assert winner is not None
            return _outcome(ecid, model_ref, winner, label, False, site)
    log.info("%s %s: %s (bin %d)", ecid, step, reason, soft)
    if row is None:
        return AlarmOutcome(
            ecid, model_ref, None, hard, soft, label, step, code, f"{step}: {reason}", site, True
        )
    return _outcome(ecid, model_ref, row, label, True, site)

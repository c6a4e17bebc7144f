"""Read-only SQL for dashboards and exports: die sites with their current signature figures, the latest
functional tests per (die, model), die counts per lot and tested / passing dies per (lot, model), jobs and
their progress.

A test result whose ``image_id`` is NULL ran the uncompensated model (accuracy *before* calibration);
one with an image ran the die's calibrated weight image (accuracy *after*). A die's *final* result for a
model is its latest calibrated test with that model, or its latest test of any kind with that model when
it has no calibrated one.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session, defer

from app.db.tables import Die, Image, Job, JobItem, Model, Provenance, Signature, TestResult, Wafer


@dataclass(frozen=True)
class DieSite:
    """A die and the summary figures of its current signature (``None`` when not characterized)."""

    die_id: int
    ecid: str
    wafer: int
    x: int
    y: int
    signature_version: int | None
    reads: int | None
    retries: int | None
    tester_s: float | None
    n_dead_cols: int | None
    n_stuck_cells: int | None
    offset_spread_mac: float | None
    characterized_at: datetime | None


@dataclass(frozen=True)
class TestRecord:
    """One functional-test record of a die with one model: measured (``accuracy`` set; ``calibrated``:
    ran the die's weight image) or not (an alarm or die fault: ``accuracy`` and ``test_time_s`` None,
    ``alarm_code`` / ``reason`` say why). ``site``: the test site that ran it (``None``: not recorded)."""

    test_id: int
    die_id: int
    model_id: int
    model_name: str
    model_version: str
    calibrated: bool
    accuracy: float | None
    hard_bin: int
    soft_bin: int
    test_time_s: float | None
    created_at: datetime
    site: int | None = None
    alarm_code: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class LotCounts:
    lot_id: str
    n_dies: int
    n_characterized: int


@dataclass(frozen=True)
class ModelCounts:
    """The dies of a lot tested with one model, those whose final result with it passes, and the time of
    the latest such test."""

    lot_id: str
    model_id: int
    name: str
    version: str
    n_tested: int
    n_passed: int
    last_tested_at: datetime


@dataclass(frozen=True)
class JobLink:
    lot_id: str
    job_id: int
    kind: str
    state: str
    created_at: datetime


def _calibrated() -> Any:
    return case((TestResult.image_id.is_(None), 0), else_=1)


def die_sites(
    session: Session, lot_id: str, wafer: int | None = None, *, die_id: int | None = None
) -> list[DieSite]:
    """Every die of the lot (or of one wafer, or the one die ``die_id``), ordered by (wafer, y, x)."""
    stmt = (
        select(
            Die.id,
            Die.ecid,
            Wafer.number,
            Die.x,
            Die.y,
            Signature.version,
            Signature.reads,
            Signature.retries,
            Signature.tester_s,
            Signature.n_dead_cols,
            Signature.n_stuck_cells,
            Signature.offset_spread_mac,
            Signature.created_at,
        )
        .join(Wafer, Die.wafer_id == Wafer.id)
        .outerjoin(Signature, (Signature.die_id == Die.id) & Signature.is_current)
        .where(Wafer.lot_id == lot_id)
        .order_by(Wafer.number, Die.y, Die.x)
    )
    if wafer is not None:
        stmt = stmt.where(Wafer.number == wafer)
    if die_id is not None:
        stmt = stmt.where(Die.id == die_id)
    return [DieSite(*cast(tuple[Any, ...], row)) for row in session.execute(stmt)]


def model_tests(
    session: Session,
    lot_id: str,
    wafer: int | None = None,
    *,
    model_id: int,
    die_id: int | None = None,
) -> list[TestRecord]:
    """Every test record with the model of every die of the lot (or of one wafer, or the one die
    ``die_id``), per die oldest first."""
    stmt = (
        select(
            TestResult.id,
            TestResult.die_id,
            TestResult.model_id,
            Model.name,
            Model.version,
            _calibrated(),
            TestResult.accuracy,
            TestResult.hard_bin,
            TestResult.soft_bin,
            TestResult.test_time_s,
            TestResult.created_at,
            Provenance.site,
            TestResult.alarm_code,
            TestResult.reason,
        )
        .join(Die, TestResult.die_id == Die.id)
        .join(Wafer, Die.wafer_id == Wafer.id)
        .join(Model, Model.id == TestResult.model_id)
        .outerjoin(Provenance, Provenance.id == TestResult.provenance_id)
        .where(Wafer.lot_id == lot_id, TestResult.model_id == model_id)
        .order_by(TestResult.die_id, TestResult.created_at, TestResult.id)
    )
    if wafer is not None:
        stmt = stmt.where(Wafer.number == wafer)
    if die_id is not None:
        stmt = stmt.where(TestResult.die_id == die_id)
    return [
        TestRecord(
            r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13]
        )
        for r in session.execute(stmt)
    ]


def lot_counts(session: Session, lot_ids: Collection[str]) -> dict[str, LotCounts]:
    """Dies and characterized dies per lot."""
    if not lot_ids:
        return {}
    ids = list(lot_ids)
    dies = dict(
        session.execute(
            select(Wafer.lot_id, func.coalesce(func.sum(Wafer.n_sites), 0))
            .where(Wafer.lot_id.in_(ids))
            .group_by(Wafer.lot_id)
        ).all()
    )
    characterized = dict(
        session.execute(
            select(Wafer.lot_id, func.count(Signature.id))
            .join(Die, Die.wafer_id == Wafer.id)
            .join(Signature, (Signature.die_id == Die.id) & Signature.is_current)
            .where(Wafer.lot_id.in_(ids))
            .group_by(Wafer.lot_id)
        ).all()
    )
    return {
        lot: LotCounts(
            lot_id=lot, n_dies=int(dies.get(lot, 0)), n_characterized=int(characterized.get(lot, 0))
        )
        for lot in ids
    }


def model_counts(
    session: Session, lot_ids: Collection[str], *, pass_bins: tuple[int, int], alarm_bin: int
) -> list[ModelCounts]:
    """Per (lot, model) tested on it (a verdict or an alarm): dies with a verdict with that model,
    dies whose final verdict with it is within ``pass_bins`` (inclusive), and the latest test time.
    A record in ``alarm_bin`` is a retest, not a verdict: a die whose only records are alarms is not
    counted as tested (its model is still listed). The final verdict is the latest calibrated or
    unmeasured (die fault) record, else the latest measured one before calibration. Ordered by lot,
    then model id."""
    if not lot_ids:
        return []
    per_die_model = (TestResult.die_id, TestResult.model_id)
    verdict = case((TestResult.soft_bin != alarm_bin, 1), else_=0)
    decisive = case((TestResult.image_id.is_not(None) | TestResult.accuracy.is_(None), 1), else_=0)
    rank = (
        func.row_number()
        .over(
            partition_by=per_die_model,
            order_by=(verdict.desc(), decisive.desc(), TestResult.created_at.desc(), TestResult.id.desc()),
        )
        .label("rank")
    )
    final = (
        select(
            Wafer.lot_id.label("lot_id"),
            TestResult.model_id.label("model_id"),
            TestResult.soft_bin.label("soft_bin"),
            func.max(TestResult.created_at).over(partition_by=per_die_model).label("last_at"),
            rank,
        )
        .join(Die, TestResult.die_id == Die.id)
        .join(Wafer, Die.wafer_id == Wafer.id)
        .where(Wafer.lot_id.in_(list(lot_ids)))
        .subquery()
    )
    lo, hi = pass_bins
    passed = func.sum(case((final.c.soft_bin.between(lo, hi), 1), else_=0))
    stmt = (
        select(
            final.c.lot_id,
            final.c.model_id,
            Model.name,
            Model.version,
            func.sum(case((final.c.soft_bin != alarm_bin, 1), else_=0)),
            passed,
            func.max(final.c.last_at),
        )
        .join(Model, Model.id == final.c.model_id)
        .where(final.c.rank == 1)
        .group_by(final.c.lot_id, final.c.model_id, Model.name, Model.version)
        .order_by(final.c.lot_id, final.c.model_id)
    )
    return [
        ModelCounts(lot, model_id, name, version, int(n or 0), int(p or 0), last)
        for lot, model_id, name, version, n, p, last in session.execute(stmt)
    ]


def first_tests(
    session: Session, lot_ids: Collection[str], *, pass_bins: tuple[int, int], alarm_bin: int
) -> dict[tuple[str, int], tuple[int, int]]:
    """Per (lot, model): dies with at least one test event with the model and dies whose first event
    is a verdict within ``pass_bins``. Events are alarms (``alarm_bin``) and verdicts: calibrated or
    unmeasured results, or, for a die that has neither, its results before calibration (the rule of
    app/services/reporting/rows.py, in SQL for the lot list)."""
    if not lot_ids:
        return {}
    per_die_model = (TestResult.die_id, TestResult.model_id)
    is_alarm = TestResult.soft_bin == alarm_bin
    decisive = case(
        (~is_alarm & (TestResult.image_id.is_not(None) | TestResult.accuracy.is_(None)), 1), else_=0
    )
    rows = (
        select(
            Wafer.lot_id.label("lot_id"),
            TestResult.id.label("id"),
            TestResult.die_id.label("die_id"),
            TestResult.model_id.label("model_id"),
            TestResult.soft_bin.label("soft_bin"),
            TestResult.created_at.label("created_at"),
            case((is_alarm, 1), else_=0).label("alarm"),
            decisive.label("decisive"),
            func.max(decisive).over(partition_by=per_die_model).label("any_decisive"),
        )
        .join(Die, TestResult.die_id == Die.id)
        .join(Wafer, Die.wafer_id == Wafer.id)
        .where(Wafer.lot_id.in_(list(lot_ids)))
        .subquery()
    )
    order = func.row_number().over(
        partition_by=(rows.c.die_id, rows.c.model_id), order_by=(rows.c.created_at, rows.c.id)
    )
    events = (
        select(rows.c.lot_id, rows.c.model_id, rows.c.soft_bin, order.label("rank"))
        .where((rows.c.alarm == 1) | (rows.c.decisive == 1) | (rows.c.any_decisive == 0))
        .subquery()
    )
    lo, hi = pass_bins
    passed = func.sum(case((events.c.soft_bin.between(lo, hi), 1), else_=0))
    stmt = (
        select(events.c.lot_id, events.c.model_id, func.count(), passed)
        .where(events.c.rank == 1)
        .group_by(events.c.lot_id, events.c.model_id)
    )
    return {(lot, int(m)): (int(n), int(p or 0)) for lot, m, n, p in session.execute(stmt)}


def jobs_for_lots(session: Session, lot_ids: Collection[str]) -> list[JobLink]:
    """Jobs touching the lots: through their items' dies, or naming the lot in their parameters
    (``params["lot_id"]`` or ``params["lot"]``). Newest first."""
    if not lot_ids:
        return []
    ids = list(lot_ids)
    through_items = (
        select(Wafer.lot_id, Job.id, Job.kind, Job.state, Job.created_at)
        .join(JobItem, JobItem.job_id == Job.id)
        .join(Die, Die.id == JobItem.die_id)
        .join(Wafer, Wafer.id == Die.wafer_id)
        .where(Wafer.lot_id.in_(ids))
        .distinct()
    )
    named = [Job.params[key].as_string() for key in ("lot_id", "lot")]
    by_params = select(func.coalesce(*named), Job.id, Job.kind, Job.state, Job.created_at).where(
        or_(*(n.in_(ids) for n in named))
    )
    links = {JobLink(*row) for stmt in (through_items, by_params) for row in session.execute(stmt)}
    return sorted(links, key=lambda j: (j.created_at, j.job_id), reverse=True)


def get_job(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def recent_jobs(session: Session, *, limit: int) -> list[Job]:
    return list(session.scalars(select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)))


def job_item_counts(session: Session, job_id: int) -> dict[tuple[str, str], int]:
    """(step, state) -> number of items."""
    rows = session.execute(
        select(JobItem.step, JobItem.state, func.count())
        .where(JobItem.job_id == job_id)
        .group_by(JobItem.step, JobItem.state)
    )
    return {(step, state): int(n) for step, state, n in rows}


def job_item_errors(session: Session, job_id: int, *, limit: int) -> list[tuple[str, str, int, str]]:
    """(ECID, step, attempts, error) of the job's failed items, most recently updated first."""
    rows = session.execute(
        select(Die.ecid, JobItem.step, JobItem.attempts, JobItem.error)
        .join(Die, Die.id == JobItem.die_id)
        .where(JobItem.job_id == job_id, JobItem.error.is_not(None))
        .order_by(JobItem.updated_at.desc(), JobItem.id.desc())
        .limit(limit)
    )
    return [(e, s, int(a), err or "") for e, s, a, err in rows]


def tests_for_die(session: Session, die_id: int) -> list[tuple[TestResult, Model]]:
    """Every functional test of the die with its model (blob not loaded), oldest first."""
    rows = session.execute(
        select(TestResult, Model)
        .options(defer(Model.blob))
        .join(Model, Model.id == TestResult.model_id)
        .where(TestResult.die_id == die_id)
        .order_by(TestResult.created_at, TestResult.id)
    )
    return [(t, m) for t, m in rows]


def images_for_die(session: Session, die_id: int) -> list[tuple[Image, str, str, int]]:
    """The die's weight images with model name, model version and signature version, newest first."""
    rows = session.execute(
        select(Image, Model.name, Model.version, Signature.version)
        .join(Model, Model.id == Image.model_id)
        .join(Signature, Signature.id == Image.signature_id)
        .where(Image.die_id == die_id)
        .order_by(Image.created_at.desc(), Image.id.desc())
    )
    return [(i, name, version, sig) for i, name, version, sig in rows]


def lot_testers(session: Session, lot_id: str, model_id: int) -> list[tuple[Provenance, int]]:
    """The testers (provenance rows) that ran functional tests of the lot's dies with the model, with
    the number of tests each ran, most first."""
    n = func.count(TestResult.id)
    rows = session.execute(
        select(Provenance, n)
        .join(TestResult, TestResult.provenance_id == Provenance.id)
        .join(Die, Die.id == TestResult.die_id)
        .join(Wafer, Wafer.id == Die.wafer_id)
        .where(Wafer.lot_id == lot_id, TestResult.model_id == model_id)
        .group_by(Provenance.id)
        .order_by(n.desc(), Provenance.id)
    )
    return [(p, int(c)) for p, c in rows]

"""Functional-test results. ``image_id`` NULL marks a run of the uncompensated network; ``accuracy``
NULL a record without a measurement (an alarm, soft bin 0, or a die fault)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.tables import TestResult


def add(session: Session, result: TestResult) -> TestResult:
    session.add(result)
    session.flush()
    return result


def latest(session: Session, die_id: int, model_id: int, *, image_id: int | None) -> TestResult | None:
    """The newest measured result of the die with the model, for that image (None: uncompensated)."""
    stmt = select(TestResult).where(
        TestResult.die_id == die_id, TestResult.model_id == model_id, TestResult.accuracy.is_not(None)
    )
    stmt = stmt.where(TestResult.image_id.is_(None) if image_id is None else TestResult.image_id == image_id)
    return session.scalar(stmt.order_by(TestResult.created_at.desc(), TestResult.id.desc()).limit(1))


def for_job_attempt(session: Session, job_item_id: int, attempt: int) -> TestResult | None:
    """The record a batch job wrote for (job item, attempt), if any (at most one: unique)."""
    return session.scalar(
        select(TestResult).where(TestResult.job_item_id == job_item_id, TestResult.attempt == attempt)
    )


def alarm_of_item(session: Session, job_item_id: int) -> TestResult | None:
    """The latest alarm or die fault (a record without a measurement) written for the job item."""
    return session.scalar(
        select(TestResult)
        .where(TestResult.job_item_id == job_item_id, TestResult.accuracy.is_(None))
        .order_by(TestResult.id.desc())
        .limit(1)
    )


def for_die(session: Session, die_id: int) -> list[TestResult]:
    return list(
        session.scalars(select(TestResult).where(TestResult.die_id == die_id).order_by(TestResult.id.desc()))
    )

"""Functional-test results. ``image_id`` NULL marks a run of the uncompensated network."""

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
        TestResult.die_id == die_id, TestResult.model_id == model_id, TestResult.reason.is_(None)
    )
    stmt = stmt.where(TestResult.image_id.is_(None) if image_id is None else TestResult.image_id == image_id)
    return session.scalar(stmt.order_by(TestResult.created_at.desc(), TestResult.id.desc()).limit(1))


def for_die(session: Session, die_id: int) -> list[TestResult]:
    return list(
        session.scalars(select(TestResult).where(TestResult.die_id == die_id).order_by(TestResult.id.desc()))
    )

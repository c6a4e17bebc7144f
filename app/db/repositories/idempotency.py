"""Stored first responses of idempotent POSTs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.db.tables import IdempotencyRecord


def get(session: Session, owner: str, key: str) -> IdempotencyRecord | None:
    stmt = select(IdempotencyRecord).where(IdempotencyRecord.owner == owner, IdempotencyRecord.key == key)
    return session.scalar(stmt.execution_options(populate_existing=True))


def add(session: Session, record: IdempotencyRecord) -> IdempotencyRecord:
    session.add(record)
    session.flush()
    return record


def renew_expired(
    session: Session,
    record_id: int,
    *,
    expired_before: datetime,
    request_sha256: str,
    now: datetime,
    pending: int,
) -> bool:
    """Make an expired record a new pending one; False when it is no longer expired (a concurrent
    request renewed it first; PostgreSQL re-checks the condition after waiting on the row)."""
    stmt = (
        update(IdempotencyRecord)
        .where(IdempotencyRecord.id == record_id, IdempotencyRecord.created_at < expired_before)
        .values(request_sha256=request_sha256, status_code=pending, response_body=None, created_at=now)
        .execution_options(synchronize_session=False)
    )
    return session.execute(stmt).rowcount == 1  # type: ignore[attr-defined]


def purge_expired(session: Session, *, expired_before: datetime) -> int:
    stmt = delete(IdempotencyRecord).where(IdempotencyRecord.created_at < expired_before)
    return session.execute(stmt.execution_options(synchronize_session=False)).rowcount  # type: ignore[attr-defined]

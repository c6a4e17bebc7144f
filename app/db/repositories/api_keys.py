"""API keys (hashes only)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.tables import ApiKey


def get_by_prefix(session: Session, prefix: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))


def add(session: Session, key: ApiKey) -> ApiKey:
    session.add(key)
    session.flush()
    return key


def list_page(
    session: Session, *, include_revoked: bool, limit: int | None, offset: int
) -> tuple[list[ApiKey], int]:
    stmt = select(ApiKey)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    page = stmt.order_by(ApiKey.created_at, ApiKey.id).limit(limit).offset(offset)
    return list(session.scalars(page)), total

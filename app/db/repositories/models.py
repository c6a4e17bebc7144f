"""Uploaded networks, unique by (name, version)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from app.db.tables import Model


def get(session: Session, name: str, version: str, *, with_blob: bool = False) -> Model | None:
    stmt = select(Model).where(Model.name == name, Model.version == version)
    if not with_blob:
        stmt = stmt.options(defer(Model.blob))
    return session.scalar(stmt)


def add(session: Session, model: Model) -> Model:
    session.add(model)
    session.flush()
    return model


def search(session: Session, *, name: str | None = None, limit: int, offset: int) -> tuple[list[Model], int]:
    """Newest first, without blobs; returns (page, total matching)."""
    where = [] if name is None else [Model.name == name]
    total = session.scalar(select(func.count()).select_from(Model).where(*where)) or 0
    stmt = (
        select(Model)
        .options(defer(Model.blob))
        .where(*where)
        .order_by(Model.created_at.desc(), Model.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(session.scalars(stmt)), total

"""Datasets, unique by (name, version); their bytes are stored once per content hash."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.tables import Dataset, DatasetBlob


def get(session: Session, name: str, version: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.name == name, Dataset.version == version))


def by_id(session: Session, dataset_id: int) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def add(session: Session, dataset: Dataset, data: bytes) -> Dataset:
    """Store ``dataset`` and, unless that content is already stored, its bytes."""
    if session.get(DatasetBlob, dataset.sha256) is None:
        session.add(DatasetBlob(sha256=dataset.sha256, data=data, size_bytes=len(data)))
        session.flush()
    session.add(dataset)
    session.flush()
    return dataset


def blob(session: Session, sha256: str) -> bytes | None:
    return session.scalar(select(DatasetBlob.data).where(DatasetBlob.sha256 == sha256))


def search(
    session: Session, *, name: str | None = None, role: str | None = None, limit: int, offset: int
) -> tuple[list[Dataset], int]:
    """Newest first; returns (page, total matching)."""
    where = []
    if name is not None:
        where.append(Dataset.name == name)
    if role is not None:
        where.append(Dataset.role == role)
    total = session.scalar(select(func.count()).select_from(Dataset).where(*where)) or 0
    stmt = (
        select(Dataset)
        .where(*where)
        .order_by(Dataset.created_at.desc(), Dataset.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(session.scalars(stmt)), total

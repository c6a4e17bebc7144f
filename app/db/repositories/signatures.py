"""Signature history per die; at most one current row per die."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, defer

from app.db.tables import Signature


def current(session: Session, die_id: int, *, with_blob: bool = True) -> Signature | None:
    stmt = select(Signature).where(Signature.die_id == die_id, Signature.is_current)
    if not with_blob:
        stmt = stmt.options(defer(Signature.blob))
    return session.scalar(stmt)


def current_summaries(session: Session, die_ids: Collection[int]) -> dict[int, Signature]:
    """Current signature per die, without loading the blobs."""
    if not die_ids:
        return {}
    rows = session.scalars(
        select(Signature)
        .options(defer(Signature.blob))
        .where(Signature.die_id.in_(die_ids), Signature.is_current)
    )
    return {s.die_id: s for s in rows}


def history(session: Session, die_id: int) -> list[Signature]:
    stmt = select(Signature).options(defer(Signature.blob)).where(Signature.die_id == die_id)
    return list(session.scalars(stmt.order_by(Signature.version)))


def last_version(session: Session, die_id: int) -> int:
    return session.scalar(select(func.max(Signature.version)).where(Signature.die_id == die_id)) or 0


def retire_current(session: Session, die_id: int) -> None:
    session.execute(
        update(Signature)
        .where(Signature.die_id == die_id, Signature.is_current)
        .values(is_current=False)
        .execution_options(synchronize_session="fetch")
    )


def add(session: Session, signature: Signature) -> Signature:
    session.add(signature)
    session.flush()
    return signature


def blobs(session: Session, signature_ids: Collection[int]) -> dict[int, bytes]:
    """The stored bytes of the signatures ``signature_ids``, by id, in one query."""
    if not signature_ids:
        return {}
    rows = session.execute(select(Signature.id, Signature.blob).where(Signature.id.in_(signature_ids)))
    return {sig_id: bytes(blob) for sig_id, blob in rows}

"""Dies: look-up by ECID or address, filtered listings, row locks."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.tables import Die, Wafer


def get_by_ecid(session: Session, ecid: str) -> Die | None:
    return session.scalar(select(Die).where(Die.ecid == ecid))


def lock(session: Session, die_id: int) -> Die | None:
    """The die row, locked until the transaction ends (``FOR UPDATE``; SQLite's write lock already
    serializes writers)."""
    return session.scalar(select(Die).where(Die.id == die_id).with_for_update(of=Die))


def search(
    session: Session,
    *,
    lot_id: str | None = None,
    wafer: int | None = None,
    x: int | None = None,
    y: int | None = None,
    limit: int,
    offset: int,
) -> tuple[list[Die], int]:
    """Dies in (lot, wafer, y, x) order; returns (page, total matching)."""
    where = []
    if lot_id is not None:
        where.append(Wafer.lot_id == lot_id)
    if wafer is not None:
        where.append(Wafer.number == wafer)
    if x is not None:
        where.append(Die.x == x)
    if y is not None:
        where.append(Die.y == y)
    total = session.scalar(select(func.count()).select_from(Die).join(Die.wafer).where(*where)) or 0
    stmt = (
        select(Die)
        .join(Die.wafer)
        .where(*where)
        .order_by(Wafer.lot_id, Wafer.number, Die.y, Die.x)
        .limit(limit)
        .offset(offset)
    )
    return list(session.scalars(stmt).unique().all()), total

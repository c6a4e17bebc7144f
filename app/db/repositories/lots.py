"""Lots with their wafers, and the dies registered with them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, undefer

from app.db.tables import Die, Lot, Wafer


def get(session: Session, lot_id: str) -> Lot | None:
    return session.get(Lot, lot_id)


def add(session: Session, lot: Lot) -> Lot:
    """Insert the lot and its wafers (flushes, so wafer ids are known)."""
    session.add(lot)
    session.flush()
    return lot


def add_dies(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Bulk-insert dies given as ``{"wafer_id", "x", "y", "ecid", "created_at"}`` rows."""
    if rows:
        session.execute(insert(Die), list(rows))


def search(
    session: Session,
    *,
    product: str | None = None,
    created_after: datetime | None = None,
    limit: int,
    offset: int,
) -> tuple[list[Lot], int]:
    """Newest first; returns (page, total matching)."""
    where = []
    if product is not None:
        where.append(Lot.product == product)
    if created_after is not None:
        where.append(Lot.created_at > created_after)
    total = session.scalar(select(func.count()).select_from(Lot).where(*where)) or 0
    page = session.scalars(
        select(Lot).where(*where).order_by(Lot.created_at.desc(), Lot.lot_id).limit(limit).offset(offset)
    ).all()
    return list(page), total


def get_wafer(session: Session, lot_id: str, number: int) -> Wafer | None:
    stmt = select(Wafer).options(undefer(Wafer.die_map))
    return session.scalar(stmt.where(Wafer.lot_id == lot_id, Wafer.number == number))


def count_dies(session: Session, lot_id: str) -> int:
    return (
        session.scalar(
            select(func.count(Die.id)).join(Wafer, Die.wafer_id == Wafer.id).where(Wafer.lot_id == lot_id)
        )
        or 0
    )

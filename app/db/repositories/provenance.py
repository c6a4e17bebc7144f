"""Provenance rows: one per distinct (driver, version, tester, site, resource, options, host)."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.tables import Provenance


def by_key(session: Session, key_sha256: str) -> Provenance | None:
    return session.scalar(select(Provenance).where(Provenance.key_sha256 == key_sha256))


def ensure(session: Session, row: Provenance) -> Provenance:
    """The stored row with ``row.key_sha256``, inserting ``row`` when there is none. A concurrent
    insert of the same key loses inside a savepoint and reads the winner's row."""
    found = by_key(session, row.key_sha256)
    if found is not None:
        return found
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        found = by_key(session, row.key_sha256)
        if found is None:
            raise
        return found
    return row


def by_ids(session: Session, ids: Collection[int | None]) -> dict[int, Provenance]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    return {p.id: p for p in session.scalars(select(Provenance).where(Provenance.id.in_(wanted)))}

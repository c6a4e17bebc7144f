"""Looking dies up by ECID or address, with their current signature."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.db.repositories import dies, signatures
from app.db.tables import Die, Signature
from app.errors import InvalidInputError, NotFoundError
from hardware.driver import DieAddress


@dataclass(frozen=True)
class DieView:
    die: Die
    current_signature: Signature | None


def get_die(session: Session, ecid: str) -> DieView:
    try:
        DieAddress.from_ecid(ecid)
    except ValueError as e:
        raise InvalidInputError(str(e), code="invalid_ecid") from e
    die = dies.get_by_ecid(session, ecid)
    if die is None:
        raise NotFoundError(f"no die {ecid!r}")
    return DieView(die, signatures.current(session, die.id))


def find_dies(
    session: Session,
    *,
    lot_id: str | None,
    wafer: int | None,
    x: int | None,
    y: int | None,
    limit: int,
    offset: int,
) -> tuple[list[DieView], int]:
    page, total = dies.search(session, lot_id=lot_id, wafer=wafer, x=x, y=y, limit=limit, offset=offset)
    current = signatures.current_summaries(session, [d.id for d in page])
    return [DieView(d, current.get(d.id)) for d in page], total

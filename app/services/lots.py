"""Registering lots (wafers, die maps, dies) and reading them back."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.repositories import audit, lots
from app.db.tables import Lot, Wafer
from app.errors import ConflictError, InvalidInputError, NotFoundError
from hardware.driver import DieAddress

MAX_SITES_PER_LOT = 200_000

Site = tuple[int, int]


@dataclass(frozen=True)
class WaferSpec:
    """One wafer to register: its number and die sites; ``shape`` records the descriptor they came from."""

    number: int
    sites: Sequence[Site]
    shape: dict[str, Any] | None = None


def circular_sites(diameter: int) -> list[Site]:
    """Sites of a round wafer ``diameter`` die pitches across, centred on die (0, 0).

    A site exists when the whole die lies inside the circle (edge dies are not placed), i.e.
    ``(|x| + 1/2)**2 + (|y| + 1/2)**2 <= (diameter / 2)**2``.
    """
    r2 = (diameter / 2) ** 2
    n = math.ceil(diameter / 2)
    return [
        (x, y)
        for y in range(-n, n + 1)
        for x in range(-n, n + 1)
        if (abs(x) + 0.5) ** 2 + (abs(y) + 0.5) ** 2 <= r2
    ]


def rectangular_sites(columns: int, rows: int) -> list[Site]:
    """A ``columns`` x ``rows`` grid with die (0, 0) in a corner."""
    return [(x, y) for y in range(rows) for x in range(columns)]


def register_lot(
    session: Session, *, lot_id: str, product: str, wafers: Sequence[WaferSpec], actor: str
) -> Lot:
    """Create the lot, its wafers and one die row per site (ECIDs from :class:`DieAddress`)."""
    n_sites = sum(len(w.sites) for w in wafers)
    if n_sites > MAX_SITES_PER_LOT:
        raise InvalidInputError(f"{n_sites} die sites in one lot; at most {MAX_SITES_PER_LOT}")
    try:
        addresses = {w.number: [DieAddress(lot_id, w.number, x, y) for x, y in w.sites] for w in wafers}
    except ValueError as e:
        raise InvalidInputError(str(e), code="invalid_die_address") from e
    if lots.get(session, lot_id) is not None:
        raise ConflictError(f"lot {lot_id!r} is already registered", code="lot_exists")

    lot = Lot(lot_id=lot_id, product=product)
    for w in sorted(wafers, key=lambda w: w.number):
        die_map = sorted(w.sites, key=lambda s: (s[1], s[0]))
        lot.wafers.append(
            Wafer(number=w.number, die_map=[list(s) for s in die_map], shape=w.shape, n_sites=len(die_map))
        )
    try:
        lots.add(session, lot)
    except IntegrityError as e:  # registered concurrently between the check and the insert
        raise ConflictError(f"lot {lot_id!r} is already registered", code="lot_exists") from e

    now = utcnow()
    lots.add_dies(
        session,
        [
            {"wafer_id": wafer.id, "x": a.x, "y": a.y, "ecid": a.ecid, "created_at": now}
            for wafer in lot.wafers
            for a in addresses[wafer.number]
        ],
    )
    audit.add(
        session,
        actor=actor,
        action="lot.register",
        target=lot_id,
        details={"product": product, "wafers": len(wafers), "dies": n_sites},
    )
    return lot


def get_lot(session: Session, lot_id: str) -> Lot:
    lot = lots.get(session, lot_id)
    if lot is None:
        raise NotFoundError(f"no lot {lot_id!r}")
    return lot


def list_lots(
    session: Session, *, product: str | None, created_after: datetime | None, limit: int, offset: int
) -> tuple[list[Lot], int]:
    return lots.search(session, product=product, created_after=created_after, limit=limit, offset=offset)


def get_wafer(session: Session, lot_id: str, number: int) -> Wafer:
    wafer = lots.get_wafer(session, lot_id, number)
    if wafer is None:
        get_lot(session, lot_id)  # say which part is missing
        raise NotFoundError(f"lot {lot_id!r} has no wafer {number}")
    return wafer

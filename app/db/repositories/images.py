"""Per-die weight images: (die, model, signature) -> content hash in the image store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from app.db.tables import Die, Image, Model, Signature, Wafer


def get(session: Session, die_id: int, model_id: int, signature_id: int) -> Image | None:
    return session.scalar(
        select(Image).where(
            Image.die_id == die_id, Image.model_id == model_id, Image.signature_id == signature_id
        )
    )


def add(session: Session, image: Image) -> Image:
    session.add(image)
    session.flush()
    return image


def current_for(session: Session, ecid: str, model_name: str, model_version: str) -> Image | None:
    """The image of the die's current signature for the model, in one query (the hot path of image GETs)."""
    return session.scalar(
        select(Image)
        .join(Die, Image.die_id == Die.id)
        .join(Signature, Image.signature_id == Signature.id)
        .join(Model, Image.model_id == Model.id)
        .where(
            Die.ecid == ecid,
            Signature.is_current,
            Model.name == model_name,
            Model.version == model_version,
        )
    )


def add_many(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Image rows (column -> value; the defaults fill the rest) in one executemany INSERT."""
    if rows:
        session.execute(insert(Image), list(rows))


def lot_pending(session: Session, lot_id: str, model_id: int) -> tuple[list[LotDie], int]:
    """The lot's dies that have a current signature but no image of it for the model (in ECID order),
    and how many dies of the lot have no current signature."""
    done = select(Image.id).where(Image.signature_id == Signature.id, Image.model_id == model_id).exists()
    rows = session.execute(
        select(Die.id, Die.ecid, Signature.id, Signature.sha256, Signature.provenance_id, done)
        .join(Wafer, Die.wafer_id == Wafer.id)
        .outerjoin(Signature, (Signature.die_id == Die.id) & Signature.is_current)
        .where(Wafer.lot_id == lot_id)
        .order_by(Die.ecid)
    ).all()
    pending = [
        LotDie(die_id, ecid, sig_id, sig_sha, prov)
        for die_id, ecid, sig_id, sig_sha, prov, has_image in rows
        if sig_id is not None and not has_image
    ]
    return pending, sum(1 for r in rows if r[2] is None)


@dataclass(frozen=True)
class LotDie:
    """A die of a lot with its current signature (no blob)."""

    die_id: int
    ecid: str
    signature_id: int
    signature_sha256: str
    provenance_id: int | None

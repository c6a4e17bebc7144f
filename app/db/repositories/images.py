"""Per-die weight images: (die, model, signature) -> content hash in the image store."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.tables import Die, Image, Model, Signature


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

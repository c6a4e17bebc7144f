"""Per-die weight images: (die, model, signature) -> content hash in the image store."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.tables import Image


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

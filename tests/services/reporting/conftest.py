"""A small lot (L2: one wafer of four dies) and builders for models, images and test results, written
through the ORM at chosen times so each test decides which result is the latest."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.repositories import models as models_repo
from app.db.repositories import signatures as signatures_repo
from app.db.tables import Die, Image, Model, TestResult
from app.services import lots, signatures
from app.services.lots import WaferSpec

T0 = datetime(2026, 2, 1, 8, 0, tzinfo=UTC)


def add_model(session: Session, name: str, version: str = "1") -> Model:
    return models_repo.add(
        session,
        Model(
            name=name,
            version=version,
            blob=b"m",
            sha256=hashlib.sha256(f"{name}@{version}".encode()).hexdigest(),
            size_bytes=1,
            class_names=["a"],
            software_accuracy=None,
        ),
    )


def die(session: Session, ecid: str) -> Die:
    row = session.scalar(select(Die).where(Die.ecid == ecid))
    assert row is not None
    return row


def add_test(
    session: Session, die: Die, model: Model, *, acc: float, soft: int, at: int, image: Image | None = None
) -> None:
    """A functional test ``at`` minutes after T0; hard bin 1 for a pass grade, else 2."""
    session.add(
        TestResult(
            die_id=die.id,
            model_id=model.id,
            image_id=None if image is None else image.id,
            accuracy=acc,
            hard_bin=1 if 1 <= soft <= 9 else 2,
            soft_bin=soft,
            test_time_s=1.0,
            created_at=T0 + timedelta(minutes=at),
        )
    )
    session.flush()


def add_image(session: Session, die: Die, model: Model) -> Image:
    """A weight image of ``model`` for the die's current signature (characterizing the die first)."""
    sig = signatures_repo.current(session, die.id)
    if sig is None:
        sig = signatures.record_signature(
            session,
            die_id=die.id,
            blob=b"sig" + die.ecid.encode(),
            reads=100,
            tester_s=2.0,
            n_dead_cols=1,
            n_stuck_cells=2,
            offset_spread_mac=0.9,
            actor="test",
        )
    image = Image(
        die_id=die.id,
        model_id=model.id,
        signature_id=sig.id,
        ecid=die.ecid,
        signature_sha256=sig.sha256,
        content_sha256=hashlib.sha256(die.ecid.encode() + model.name.encode()).hexdigest(),
        size_bytes=10,
    )
    session.add(image)
    session.flush()
    return image


@pytest.fixture
def lot(session: Session) -> dict[str, Die]:
    """Lot L2, one wafer of four dies (0..3, 0): ``d0`` .. ``d3``."""
    lots.register_lot(
        session,
        lot_id="L2",
        product="P",
        wafers=[WaferSpec(1, [(0, 0), (1, 0), (2, 0), (3, 0)])],
        actor="test",
    )
    return {f"d{x}": die(session, f"L2-W01-X+00{x}Y+000") for x in range(4)}

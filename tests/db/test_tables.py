"""What the schema itself guarantees, whatever the services do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.db.session import session_scope
from app.db.tables import Die, Lot, Signature, Wafer


def _die(session: Session, lot_id: str = "LOT1") -> Die:
    lot = Lot(lot_id=lot_id, product="P")
    lot.wafers.append(Wafer(number=1, die_map=[[0, 0]], shape=None, n_sites=1))
    session.add(lot)
    session.flush()
    die = Die(wafer_id=lot.wafers[0].id, x=0, y=0, ecid=f"{lot_id}-W01-X+000Y+000")
    session.add(die)
    session.flush()
    return die


def _signature(die_id: int, version: int, *, current: bool) -> Signature:
    return Signature(
        die_id=die_id,
        version=version,
        is_current=current,
        blob=b"sig",
        sha256="0" * 64,
        reads=1,
        tester_s=0.1,
        n_dead_cols=0,
        n_stuck_cells=0,
        offset_spread_mac=0.5,
    )


def test_two_current_signatures_for_one_die_are_refused(session_factory: sessionmaker[Session]) -> None:
    with session_scope(session_factory) as s:
        die_id = _die(s).id
        s.add(_signature(die_id, 1, current=True))
    with pytest.raises(IntegrityError), session_scope(session_factory) as s:
        s.add(_signature(die_id, 2, current=True))
        s.flush()
    with session_scope(session_factory) as s:  # history rows that are not current are fine
        s.add_all([_signature(die_id, 2, current=False), _signature(die_id, 3, current=False)])
    with session_scope(session_factory) as s:
        n_current = len(s.scalars(select(Signature).where(Signature.is_current)).all())
        assert n_current == 1


def test_die_site_and_ecid_are_unique(session_factory: sessionmaker[Session]) -> None:
    with session_scope(session_factory) as s:
        wafer_id = _die(s).wafer_id
    with pytest.raises(IntegrityError), session_scope(session_factory) as s:
        s.add(Die(wafer_id=wafer_id, x=0, y=0, ecid="OTHER"))
        s.flush()
    with pytest.raises(IntegrityError), session_scope(session_factory) as s:
        s.add(Die(wafer_id=wafer_id, x=1, y=0, ecid="LOT1-W01-X+000Y+000"))
        s.flush()


def test_foreign_keys_are_enforced(session_factory: sessionmaker[Session]) -> None:
    with pytest.raises(IntegrityError), session_scope(session_factory) as s:
        s.add(Die(wafer_id=12345, x=0, y=0, ecid="NOWAFER-W01-X+000Y+000"))
        s.flush()


def test_timestamps_come_back_as_aware_utc(session_factory: sessionmaker[Session]) -> None:
    taipei = datetime(2026, 1, 5, 16, 30, tzinfo=timezone(timedelta(hours=8)))
    with session_scope(session_factory) as s:
        s.add(Lot(lot_id="LOT9", product="P", created_at=taipei))
    with session_scope(session_factory) as s:
        lot = s.scalars(select(Lot).execution_options(populate_existing=True)).one()
        assert lot.created_at == taipei
        assert lot.created_at.tzinfo == UTC


def test_sqlite_runs_with_wal_foreign_keys_and_busy_timeout(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite pragmas")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30_000

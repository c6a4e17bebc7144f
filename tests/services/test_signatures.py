"""Concurrent characterizations of one die never leave two current signatures."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.repositories import signatures as signature_repo
from app.db.session import session_scope
from app.db.tables import Die, Signature
from app.errors import NotFoundError
from app.services.lots import WaferSpec, register_lot
from app.services.signatures import record_signature


def _one_die(session_factory: sessionmaker[Session]) -> int:
    with session_scope(session_factory) as s:
        register_lot(s, lot_id="LOT1", product="P", wafers=[WaferSpec(1, [(0, 0)])], actor="t")
    with session_scope(session_factory) as s:
        return s.scalars(select(Die.id)).one()


def _record(session_factory: sessionmaker[Session], die_id: int, blob: bytes) -> int:
    with session_scope(session_factory) as s:
        sig = record_signature(
            s,
            die_id=die_id,
            blob=blob,
            reads=4096,
            tester_s=1.5,
            n_dead_cols=1,
            n_stuck_cells=3,
            offset_spread_mac=0.9,
            actor="test",
        )
        return sig.version


def test_a_new_signature_becomes_current_and_the_old_one_history(
    session_factory: sessionmaker[Session],
) -> None:
    die_id = _one_die(session_factory)
    assert _record(session_factory, die_id, b"first") == 1
    assert _record(session_factory, die_id, b"second") == 2
    with session_scope(session_factory) as s:
        current = signature_repo.current(s, die_id)
        assert current is not None and current.blob == b"second" and current.version == 2
        assert [(h.version, h.is_current) for h in signature_repo.history(s, die_id)] == [
            (1, False),
            (2, True),
        ]


def test_concurrent_signatures_for_one_die_queue_and_one_stays_current(
    session_factory: sessionmaker[Session],
) -> None:
    die_id = _one_die(session_factory)
    n = 8
    with ThreadPoolExecutor(max_workers=n) as pool:
        versions = list(pool.map(lambda i: _record(session_factory, die_id, f"sig{i}".encode()), range(n)))
    assert sorted(versions) == list(range(1, n + 1))
    with session_scope(session_factory) as s:
        rows = s.scalars(select(Signature).where(Signature.die_id == die_id)).all()
        assert len(rows) == n
        assert [r.version for r in rows if r.is_current] == [n]


def test_unknown_die_is_not_found(session_factory: sessionmaker[Session]) -> None:
    with pytest.raises(NotFoundError):
        _record(session_factory, 999_999, b"x")

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.tables import AuditEvent, Die
from app.errors import ConflictError, InvalidInputError
from app.services.lots import MAX_SITES_PER_LOT, WaferSpec, circular_sites, rectangular_sites, register_lot
from hardware.driver import DieAddress


@pytest.mark.parametrize(("diameter", "n_sites"), [(1, 0), (2, 1), (3, 1), (4, 5), (6, 21), (10, 61)])
def test_circular_die_map_keeps_whole_dies_only(diameter: int, n_sites: int) -> None:
    sites = circular_sites(diameter)
    assert len(sites) == n_sites
    assert all((abs(x) + 0.5) ** 2 + (abs(y) + 0.5) ** 2 <= (diameter / 2) ** 2 for x, y in sites)
    assert set(sites) == {(-x, y) for x, y in sites} == {(x, -y) for x, y in sites}  # symmetric


def test_rectangular_die_map() -> None:
    assert rectangular_sites(3, 2) == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]


def test_register_lot_creates_one_die_per_site_with_parseable_ecids(session: Session) -> None:
    lot = register_lot(
        session,
        lot_id="LOT7",
        product="KWS",
        wafers=[WaferSpec(2, circular_sites(6)), WaferSpec(1, [(5, -3)])],
        actor="tester",
    )
    assert [w.number for w in lot.wafers] == [1, 2]
    dies = session.scalars(select(Die)).all()
    assert len(dies) == 22
    for d in dies:
        a = DieAddress.from_ecid(d.ecid)
        assert (a.lot_id, a.wafer, a.x, a.y) == ("LOT7", d.wafer.number, d.x, d.y)
    audit = session.scalars(select(AuditEvent)).one()
    assert (audit.actor, audit.action, audit.target, audit.details["dies"]) == (
        "tester",
        "lot.register",
        "LOT7",
        22,
    )


def test_register_lot_twice_is_a_conflict(session: Session) -> None:
    register_lot(session, lot_id="LOT7", product="KWS", wafers=[WaferSpec(1, [(0, 0)])], actor="t")
    with pytest.raises(ConflictError) as e:
        register_lot(session, lot_id="LOT7", product="KWS", wafers=[WaferSpec(1, [(0, 0)])], actor="t")
    assert e.value.code == "lot_exists"


def test_register_lot_refuses_addresses_outside_the_ecid_scheme(session: Session) -> None:
    with pytest.raises(InvalidInputError, match=r"outside -999\.\.999"):
        register_lot(session, lot_id="LOT7", product="KWS", wafers=[WaferSpec(1, [(1000, 0)])], actor="t")
    with pytest.raises(InvalidInputError, match="at most"):
        sites = rectangular_sites(1000, MAX_SITES_PER_LOT // 1000 + 1)
        register_lot(session, lot_id="LOT8", product="KWS", wafers=[WaferSpec(1, sites)], actor="t")

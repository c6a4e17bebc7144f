"""Characterizing a die records which tester measured it and how many driver calls it retried: in the
signature row, the die's record (/v1/dies) and the die page."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.api.schemas.dies import DieOut
from app.config import Settings
from app.db.session import session_scope
from app.db.tables import Provenance, Signature
from app.services import dies
from app.services.calibration import characterize_die
from app.services.hardware import DriverPool, TesterSite, site_spec
from app.services.lots import WaferSpec, register_lot
from app.services.reporting.dies import die_report
from tests.calibration.flaky import FlakyDriver

ECID = "PROV1-W01-X+000Y+000"
BUDGET = 8192


def _pool(settings: Settings, **faults: Any) -> DriverPool:
    spec = site_spec(settings, 2, resource="TCPIP0::10.0.0.7::INSTR")
    driver = FlakyDriver(site=2, resource=spec.resource, fleet_seed=settings.fleet_seed, **faults)
    return DriverPool([TesterSite("simulated", spec, driver)])


def test_signature_records_its_tester_and_retries(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    with session_scope(session_factory) as s:
        register_lot(s, lot_id="PROV1", product="P", wafers=[WaferSpec(1, [(0, 0)])], actor="t")
    flaky = _pool(settings, faults={("read_macro", 4): "timeout", ("read_macro", 40): "contact"})
    out = characterize_die(session_factory, flaky, ECID, budget=BUDGET)
    clean = characterize_die(session_factory, _pool(settings), ECID, budget=BUDGET)
    assert (out.retries, clean.retries) == (2, 0)
    assert out.signature_sha256 == clean.signature_sha256  # the retries changed nothing measured
    assert out.provenance is not None
    assert (out.provenance.site, out.provenance.resource, out.provenance.serial) == (
        2,
        "TCPIP0::10.0.0.7::INSTR",
        f"seed-{settings.fleet_seed}",
    )

    reused = characterize_die(session_factory, _pool(settings), ECID, force=False)
    assert reused.created is False and reused.retries == 0 and reused.provenance == clean.provenance

    with session_scope(session_factory) as s:
        rows = s.scalars(select(Signature).order_by(Signature.version)).all()
        assert [r.retries for r in rows] == [2, 0]
        (prov,) = s.scalars(select(Provenance)).all()  # both measured on one site: one row
        assert {r.provenance_id for r in rows} == {prov.id}
        assert (prov.driver, prov.vendor, prov.model, prov.site) == (
            "simulated",
            "cimcal",
            "simulated fleet",
            2,
        )
        assert prov.options_sha256 == flaky.sites[0].spec.options_sha256 and prov.host
        assert s.scalar(select(func.count()).select_from(Provenance)) == 1

        record = DieOut.of(dies.get_die(s, ECID)).model_dump()
        assert record["current_signature"]["retries"] == 0
        assert record["current_signature"]["provenance"]["resource"] == "TCPIP0::10.0.0.7::INSTR"

        page = die_report(s, ECID)
        assert [v.retries for v in page.signature_history] == [2, 0]
        assert page.signature is not None and page.signature.provenance is not None
        assert (page.signature.provenance.site, page.signature.provenance.driver) == (2, "simulated")

"""``cimcal demo`` end to end on the light step functions (the real ones: ``python -m app.cli demo``)."""

from __future__ import annotations

import io
from contextlib import redirect_stderr
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.cli import build_parser, main
from app.config import Settings, get_settings
from app.db import migrate
from app.db.session import make_engine, make_session_factory
from app.demo import DEMO_CORNER, DemoOptions, run, summary, wafer_sites
from app.services.hardware import StationConfigError
from app.services.jobs import StepFunctions
from app.services.lots import circular_sites
from tests.jobs.conftest import add_models
from tests.jobs.fake_steps import build


@pytest.mark.parametrize("n", [1, 7, 12, 100, 500])
def test_wafer_sites_are_a_round_map_of_the_asked_size(n: int) -> None:
    sites, diameter = wafer_sites(n)
    assert len(sites) == len(set(sites)) == n
    assert set(sites) <= set(circular_sites(diameter))
    assert diameter == 1 or len(circular_sites(diameter - 1)) < n


def test_demo_registers_calibrates_and_summarizes_a_lot(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    add_models(make_session_factory(engine), ("kws@1",))
    engine.dispose()

    out = io.StringIO()
    options = DemoOptions(
        lot_id="DEMOT1", wafers=2, dies_per_wafer=5, model="kws@1", database_url=url, progress=False, out=out
    )
    result = run(options, steps=build)
    assert result.progress.job.state == "succeeded"
    assert (result.report.n_dies, result.report.n_characterized, result.report.n_tested) == (10, 10, 10)
    assert result.report.yield_pct == 100.0 and result.tester_s_per_die == pytest.approx(0.3)
    text = summary(result)
    for part in ("Lot DEMOT1: 10 dies on 2 wafers", "Yield by soft bin", "before calibration", "after calibration",
                 "Tester time per die", "Wall time", "cimcal serve", "/dashboard/lots/DEMOT1", "/docs"):  # fmt: skip
        assert part in text


def test_demo_command_line() -> None:
    args = build_parser().parse_args(["demo", "--wafers", "2", "--dies-per-wafer", "30", "--lot", "L1"])
    assert (args.wafers, args.dies_per_wafer, args.lot, args.functional_test_sample) == (2, 30, "L1", 1.0)
    assert args.corner is None
    assert build_parser().parse_args(["demo", "--corner", "aggressive"]).corner == "aggressive"


def _demo_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    add_models(make_session_factory(engine), ("kws@1",))
    engine.dispose()
    return url


def test_demo_runs_at_a_corner_where_calibration_matters_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CIMCAL_CORNER", raising=False)
    get_settings.cache_clear()
    url = _demo_db(tmp_path)
    seen: list[str] = []

    def steps(factory: sessionmaker[Session], settings: Settings) -> StepFunctions:
        seen.append(settings.corner)
        return build(factory, settings)

    for lot, corner in (("DEMOC1", None), ("DEMOC2", "aggressive")):
        opts = DemoOptions(
            lot_id=lot,
            wafers=1,
            dies_per_wafer=2,
            model="kws@1",
            database_url=url,
            progress=False,
            corner=corner,
        )
        result = run(opts, steps=steps)
        assert result.corner == seen[-1] and f"process corner {seen[-1]!r}" in summary(result)
    assert seen == [DEMO_CORNER, "aggressive"] and DEMO_CORNER != "typical"
    monkeypatch.setenv("CIMCAL_CORNER", "skewed")
    get_settings.cache_clear()
    try:
        run(DemoOptions(lot_id="DEMOC3", wafers=1, dies_per_wafer=2, model="kws@1", database_url=url,
                        progress=False), steps=steps)  # fmt: skip
    finally:
        get_settings.cache_clear()
    assert seen[-1] == "skewed"


def test_demo_refuses_an_unknown_corner_before_writing_anything(tmp_path: Path) -> None:
    url = _demo_db(tmp_path)
    with pytest.raises(StationConfigError, match="unknown process corner 'fast'"):
        run(
            DemoOptions(lot_id="DEMOX", database_url=url, model="kws@1", progress=False, corner="fast"),
            steps=build,
        )
    engine = make_engine(url)
    try:
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM lot")).scalar_one() == 0
    finally:
        engine.dispose()
    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["demo", "--db", url, "--corner", "fast"]) == 1
    assert "unknown process corner 'fast'" in err.getvalue()

"""``cimcal demo``: the README's main command, through its command line with the real steps of
:mod:`app.jobs.steps` on the simulated fleet and SQLite (a few dies), and :func:`app.demo.run` on the
light step functions."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from app.cli import build_parser, main
from app.config import Settings, get_settings
from app.db import migrate
from app.db.repositories.jobs import lot_dies
from app.db.session import make_engine, make_session_factory, session_scope
from app.db.tables import Image, Job, JobItem, Signature, TestResult
from app.demo import DEMO_CORNER, DemoOptions, run, summary, wafer_sites
from app.services.hardware import StationConfigError
from app.services.jobs import StepFunctions, in_sample
from app.services.lots import circular_sites
from tests.conftest import SHARED_CACHE_DIR
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


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cimcal_demo_runs_the_real_steps_on_the_simulated_fleet(tmp_path: Path) -> None:
    """``python -m app.cli demo`` with its options on 4 dies: the real characterization,
    compensation and functional test (with the smaller test settings of the suite: 24 clips)."""
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CIMCAL_IMAGE_STORE_DIR": str(tmp_path / "images"),
        "CIMCAL_CACHE_DIR": str(SHARED_CACHE_DIR),
        "CIMCAL_EVAL_CLIPS_PER_CLASS": "4",
        "CIMCAL_FUNCTIONAL_TEST_CLIPS": "24",
    }
    env.pop("CIMCAL_DATABASE_URL", None)
    cmd = [sys.executable, "-m", "app.cli", "demo", "--db", url, "--lot", "DEMOCI1", "--wafers", "2"]
    cmd += [
        "--dies-per-wafer",
        "2",
        "--model",
        "kws-bnn@1",
        "--workers",
        "2",
        "--functional-test-sample",
        "0.6",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]

    engine = make_engine(url)
    try:
        with session_scope(make_session_factory(engine)) as s:
            dies = lot_dies(s, "DEMOCI1")
            job = s.scalars(select(Job)).one()
            sampled = {d for d, ecid in dies if in_sample(ecid, 0.6)}
            per_die = {
                t.__tablename__: dict(s.execute(select(t.die_id, func.count()).group_by(t.die_id)).all())
                for t in (Signature, Image)
            }
            # The functional test stores the die with its image and, to measure "before calibration",
            # without (image_id NULL).
            tested = s.execute(select(TestResult.die_id, TestResult.image_id.is_not(None))).all()
            signatures = s.execute(select(Signature.tester_s, func.length(Signature.blob))).all()
            attempts = s.scalars(select(JobItem.attempts).where(JobItem.job_id == job.id)).all()
            accuracies = s.scalars(select(TestResult.accuracy).where(TestResult.image_id.is_not(None))).all()
    finally:
        engine.dispose()
    assert len(dies) == 4 and 0 < len(sampled) < 4  # the sample option picked some dies, not all
    assert job.state == "succeeded" and job.params["model"] == "kws-bnn@1"
    assert job.params["functional_test_sample"] == 0.6
    assert per_die["signature"] == {d: 1 for d, _ in dies} and per_die["image"] == {d: 1 for d, _ in dies}
    assert sorted(tested) == sorted((d, calibrated) for d in sampled for calibrated in (False, True))
    # Measured signatures (~0.036 s of simulated tester time with broadcast writes, ~10 kB), not the
    # stand-ins' (0.3 s, 256 B).
    assert all(0.01 < t < 0.1 and size > 5_000 for t, size in signatures)
    assert accuracies and all(a is not None and 0.5 < a <= 1.0 for a in accuracies)  # calibrated
    assert attempts == [1] * (8 + len(sampled))
    assert job.counters == {
        "dies": 4,
        "dies_done": 4,
        "dies_succeeded": 4,
        "dies_failed": 0,
        "dies_alarmed": 0,
        "dies_die_fault": 0,
        "dies_cancelled": 0,
        "items_retried": 0,
        "attempts": 8 + len(sampled),
    }
    out = done.stdout
    assert "Lot DEMOCI1: 4 dies on 2 wafers, model kws-bnn@1, job 1 succeeded" in out
    assert f"functionally tested {len(sampled)}, passed {len(sampled)}" in out
    for part in ("Yield by soft bin", "before calibration", "after calibration", "Tester time per die",
                 f"export CIMCAL_DATABASE_URL={url}", "/dashboard/lots/DEMOCI1"):  # fmt: skip
        assert part in out


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

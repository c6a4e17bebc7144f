"""The reporting service: which test result decides a die's bins, yields and bin counts, SPC limits, Cpk,
job progress, and the one function that decodes signatures."""

from __future__ import annotations

import hashlib
import statistics
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.repositories import models as models_repo
from app.db.tables import Die, Image, Job, JobItem, JobState, Model, TestResult
from app.errors import NotFoundError
from app.services import lots, reporting, signatures
from app.services.lots import WaferSpec
from tests.dashboard.demo import build_demo_lot

T0 = datetime(2026, 2, 1, 8, 0, tzinfo=UTC)


def _model(session: Session, name: str) -> Model:
    return models_repo.add(
        session,
        Model(
            name=name,
            version="1",
            blob=b"m",
            sha256=hashlib.sha256(name.encode()).hexdigest(),
            size_bytes=1,
            class_names=["a"],
            software_accuracy=None,
        ),
    )


def _die(session: Session, ecid: str) -> Die:
    die = session.scalar(select(Die).where(Die.ecid == ecid))
    assert die is not None
    return die


def _test(
    session: Session, die: Die, model: Model, *, acc: float, soft: int, at: int, image: Image | None = None
) -> None:
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


def _image(session: Session, die: Die, model: Model) -> Image:
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
    """Lot L2, one wafer of four dies (0..3, 0)."""
    lots.register_lot(
        session,
        lot_id="L2",
        product="P",
        wafers=[WaferSpec(1, [(0, 0), (1, 0), (2, 0), (3, 0)])],
        actor="test",
    )
    return {f"d{x}": _die(session, f"L2-W01-X+00{x}Y+000") for x in range(4)}


def test_the_latest_calibrated_test_decides_and_before_prefers_its_model(
    session: Session, lot: dict[str, Die]
) -> None:
    a, b = _model(session, "a"), _model(session, "b")
    d0, d1, d2 = lot["d0"], lot["d1"], lot["d2"]
    img_a = _image(session, d0, a)
    # d0: baseline with both models, then two calibrated runs of a; a later *baseline* must not win.
    _test(session, d0, b, acc=0.10, soft=11, at=1)
    _test(session, d0, a, acc=0.30, soft=11, at=2)
    _test(session, d0, a, acc=0.60, soft=11, at=3, image=img_a)
    _test(session, d0, a, acc=0.85, soft=1, at=4, image=img_a)
    _test(session, d0, b, acc=0.20, soft=11, at=5)
    # d1: only an uncompensated test: its bins count, it has no "after".
    _test(session, d1, a, acc=0.40, soft=11, at=1)
    # d2: characterized only.
    _image(session, d2, a)
    session.flush()

    rows = {r.ecid: r for r in reporting.die_rows(session, "L2")}
    r0, r1, r2, r3 = (rows[lot[k].ecid] for k in ("d0", "d1", "d2", "d3"))
    assert (r0.soft_bin, r0.passed, r0.accuracy_after, r0.accuracy_before) == (1, True, 0.85, 0.30)
    assert r0.model == "a 1"
    assert (r1.soft_bin, r1.passed, r1.accuracy_after, r1.accuracy_before) == (11, False, None, 0.40)
    assert (r2.soft_bin, r2.signature_version, r2.n_stuck_cells) == (None, 1, 2)
    assert (r3.soft_bin, r3.signature_version) == (None, None)

    (row,) = reporting.list_lots(session, limit=10, offset=0).items
    assert (row.n_dies, row.n_characterized, row.n_tested, row.n_passed) == (4, 2, 2, 1)
    assert row.yield_pct == 50.0


def test_lot_list_counts_agree_with_the_lot_report(session: Session) -> None:
    demo = build_demo_lot(session)
    (row,) = reporting.list_lots(session, limit=10, offset=0).items
    report = reporting.lot_report(session, "DEMO001")
    passed = sum(1 <= (d.soft_bin or 0) <= 9 for d in demo.tested)
    assert (row.n_tested, row.n_passed) == (report.n_tested, report.n_passed) == (len(demo.tested), passed)
    assert row.n_characterized == report.n_characterized == sum(d.characterized for d in demo.dies.values())
    assert row.latest_job is not None and row.latest_job.job_id == demo.job_id
    assert [b.count for b in report.pareto] == sorted((b.count for b in report.pareto), reverse=True)
    assert sum(b.count for b in report.pareto) == len(demo.tested)
    assert len(report.accuracy_after_pct) == len(demo.tested)
    assert report.accuracy_after_stats.mean == pytest.approx(
        statistics.fmean(100 * (d.accuracy_after or 0) for d in demo.tested)
    )
    yields = [w.yield_pct for w in report.wafers]
    assert report.yield_trend.center == pytest.approx(statistics.fmean(y for y in yields if y is not None))


def test_spc_limits_are_mean_plus_minus_three_sigma() -> None:
    chart = reporting.spc_chart("yield", "%", [(1, 80.0), (2, 82.0), (3, 78.0), (4, None), (5, 40.0)])
    values = [80.0, 82.0, 78.0, 40.0]
    mean, sigma = statistics.fmean(values), statistics.stdev(values)
    assert chart.center == pytest.approx(mean)
    assert (chart.ucl, chart.lcl) == (pytest.approx(mean + 3 * sigma), pytest.approx(mean - 3 * sigma))
    assert [p.out_of_control for p in chart.points] == [False] * 5
    # With n wafers no point can lie beyond (n-1)/sqrt(n) sigma: an outlier needs 11 or more wafers.
    many = reporting.spc_chart("yield", "%", [(w, 80.0) for w in range(1, 12)] + [(12, 0.0)])
    assert [p.wafer for p in many.points if p.out_of_control] == [12]
    one = reporting.spc_chart("yield", "%", [(1, 80.0)])
    assert (one.center, one.ucl, one.lcl) == (80.0, None, None)


def test_cpk_uses_the_lower_limit() -> None:
    st = reporting.describe([70.0, 80.0, 90.0], lsl=60.0)
    assert st.cpk == pytest.approx((80.0 - 60.0) / (3 * 10.0))
    assert reporting.describe([], lsl=60.0).n == 0
    assert reporting.describe([75.0], lsl=60.0).cpk is None


def test_bin_colours() -> None:
    passes = {reporting.soft_bin_color(b) for b in range(1, 10)}
    assert len(passes) == 9
    assert reporting.soft_bin_color(0) == "#000000"
    assert reporting.soft_bin_color(None) == reporting.UNTESTED_COLOR
    assert reporting.soft_bin_color(11) not in passes
    assert reporting.soft_bin_color(11) != reporting.soft_bin_color(12)


def test_wafer_report(session: Session) -> None:
    demo = build_demo_lot(session)
    w = reporting.wafer_report(session, "DEMO001", 2)
    assert len(w.dies) == len(demo.on_wafer(2)) == w.n_sites
    assert (w.frame.x_min, w.frame.x_max, w.frame.y_direction) == (-3, 3, "down")
    legend = {b.soft_bin: b.count for b in w.legend}
    assert legend.get(None) == sum(d.soft_bin is None for d in demo.on_wafer(2))
    assert all(d.color == reporting.soft_bin_color(d.soft_bin) for d in w.dies)
    with pytest.raises(NotFoundError):
        reporting.wafer_report(session, "DEMO001", 4)


def test_job_progress_and_lot_link_through_params(session: Session, lot: dict[str, Die]) -> None:
    job = Job(kind="calibrate", state=JobState.running, params={"lot": "L2"}, created_by="t")
    session.add(job)
    session.flush()
    states = [JobState.succeeded, JobState.failed, JobState.running, JobState.queued]
    for die, state in zip(lot.values(), states, strict=True):
        session.add(
            JobItem(
                job_id=job.id,
                die_id=die.id,
                step="characterize",
                state=state,
                error="contact lost" if state == JobState.failed else None,
                attempts=3 if state == JobState.failed else 1,
            )
        )
    session.flush()
    r = reporting.job_report(session, job.id)
    assert (r.n_items, r.n_done, r.progress, r.terminal) == (4, 2, 0.5, False)
    assert [(e.ecid, e.error) for e in r.errors] == [(lot["d1"].ecid, "contact lost")]
    (row,) = reporting.list_lots(session, limit=10, offset=0).items
    assert row.latest_job is not None and row.latest_job.job_id == job.id
    with pytest.raises(NotFoundError):
        reporting.job_report(session, job.id + 1)


def test_decode_signature() -> None:
    bad = reporting.decode_signature(b"not a signature")
    assert bad.error and not bad.gain
    cal = pytest.importorskip("app.calibration.signature")
    np = pytest.importorskip("numpy")
    from hardware.chip import ChipGeometry

    g = ChipGeometry(n_macros=2, rows=8, cols=4, spare_cols=1)
    dead = np.zeros((2, 5), bool)
    dead[1, 2] = True
    sig = cal.Signature(
        geometry=g,
        gain=np.full((2, 5), 1.0),
        offset_mac=np.arange(10, dtype=float).reshape(2, 5) / 4,
        noise_sigma_mac=np.ones(2),
        cell_sigma=0.05,
        cell_residual_sigma=0.05,
        dead_cols=dead,
        dead_code=np.zeros((2, 5), np.int16),
        stuck=cal.StuckCells(
            np.array([0, 0]), np.array([1, 2]), np.array([3, 3]), np.array([1, -1]), np.ones(2)
        ),
    )
    d = reporting.decode_signature(sig.to_bytes())
    assert d.error is None
    assert (d.n_macros, d.data_cols, d.spare_cols) == (2, 4, 1)
    assert d.offset_mac[1][4] == 2.25 and d.gain[0][0] == 1.0
    assert d.dead_cols[1] == [0, 0, 1, 0, 0]
    assert d.stuck_cells[0] == [0, 0, 0, 2, 0]
    assert d.summary["n_dead_cols"] == 1

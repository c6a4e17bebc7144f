"""First-pass and final yield from each die's test history: an alarm is "retest", never a verdict."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from app.db.tables import Die, Model, TestResult
from app.services.reporting.lots import list_lots, lot_report
from app.services.reporting.rows import die_rows
from app.services.reporting.scope import find_model
from app.services.reporting.yields import yields
from tests.services.reporting.conftest import T0, add_image, add_model, add_test


def _alarm(session: Session, die: Die, model: Model, *, at: int) -> None:
    session.add(
        TestResult(
            die_id=die.id,
            model_id=model.id,
            accuracy=None,
            hard_bin=0,
            soft_bin=0,
            test_time_s=None,
            reason="functional-test: contact_lost: probe contact lost",
            alarm_code="contact_lost",
            step="functional-test",
            created_at=T0 + timedelta(minutes=at),
        )
    )
    session.flush()


def test_first_pass_and_final_yield(session: Session, lot: dict[str, Die]) -> None:
    m = add_model(session, "a")
    d0, d1, d2, d3 = (lot[f"d{i}"] for i in range(4))
    images = {d: add_image(session, lot[d], m) for d in ("d0", "d1", "d2")}
    # d0: alarm, then a calibrated pass on retest: final pass, not a first pass.
    _alarm(session, d0, m, at=1)
    add_test(session, d0, m, acc=0.5, soft=11, at=2)
    add_test(session, d0, m, acc=0.9, soft=1, at=3, image=images["d0"])
    # d1: a calibrated fail, a retest that passes, then an alarm that changes nothing.
    add_test(session, d1, m, acc=0.6, soft=10, at=1, image=images["d1"])
    add_test(session, d1, m, acc=0.86, soft=1, at=2, image=images["d1"])
    _alarm(session, d1, m, at=3)
    # d2: first-time pass.
    add_test(session, d2, m, acc=0.88, soft=1, at=1, image=images["d2"])
    # d3: only alarms: no verdict, waits for a retest.
    _alarm(session, d3, m, at=1)
    _alarm(session, d3, m, at=2)

    rows = {r.ecid: r for r in die_rows(session, "L2", find_model(session, "a@1"))}
    r0, r1, r2, r3 = (rows[lot[f"d{i}"].ecid] for i in range(4))
    assert (r0.soft_bin, r0.passed, r0.first_pass, r0.n_tests, r0.n_alarms) == (1, True, False, 2, 1)
    assert (r0.accuracy_before, r0.accuracy_after) == (0.5, 0.9)  # the alarm is neither
    assert (r1.soft_bin, r1.passed, r1.first_pass, r1.n_tests, r1.n_alarms) == (1, True, False, 3, 1)
    assert (r2.soft_bin, r2.passed, r2.first_pass, r2.n_tests) == (1, True, True, 1)
    assert (r3.soft_bin, r3.hard_bin, r3.passed, r3.first_pass, r3.n_alarms) == (0, 0, None, False, 2)
    assert (r3.accuracy_before, r3.accuracy_after, r3.test_time_s, r3.alarm_code) == (
        None,
        None,
        None,
        "contact_lost",
    )
    assert r3.retest_pending and not r3.has_verdict

    y = yields(rows.values())
    assert (y.n_tested, y.n_passed, y.n_failed, y.yield_pct) == (3, 3, 0, 100.0)
    assert (y.n_first_tested, y.n_first_passed) == (4, 1)
    assert y.first_pass_yield_pct == 25.0
    assert (y.n_retested, y.n_alarms, y.n_alarmed, y.n_retest_pending) == (3, 4, 3, 1)

    report = lot_report(session, "L2")
    assert report.yields == y
    assert (report.n_tested, report.n_passed) == (3, 3)
    assert sorted(report.accuracy_after_pct) == [86.0, 88.0, 90.0]
    assert {b.soft_bin: b.count for b in report.pareto} == {1: 3, 0: 1}
    (tested,) = report.models  # the SQL of the lot list agrees: the alarm-only die is not tested
    assert (tested.n_tested, tested.n_passed) == (3, 3)
    (row,) = list_lots(session, limit=10, offset=0).items
    assert (row.n_tested, row.n_passed, row.yield_pct, row.first_pass_yield_pct) == (3, 3, 100.0, 25.0)


def test_a_lot_with_only_alarms_shows_them_and_tests_nothing(session: Session, lot: dict[str, Die]) -> None:
    m = add_model(session, "a")
    for i, die in enumerate(lot.values()):
        _alarm(session, die, m, at=i)
    report = lot_report(session, "L2")
    assert report.model == "a@1"  # the model is known from its alarms
    assert (report.n_tested, report.n_passed, report.yield_pct) == (0, 0, None)
    assert report.yields is not None and report.yields.n_retest_pending == 4
    assert report.yields.first_pass_yield_pct == 0.0
    assert [(b.soft_bin, b.count) for b in report.pareto] == [(0, 4)]
    assert report.accuracy_before_pct == report.accuracy_after_pct == []
    (row,) = list_lots(session, limit=10, offset=0).items
    assert (row.model, row.n_tested, row.yield_pct, row.first_pass_yield_pct) == ("a@1", 0, None, 0.0)

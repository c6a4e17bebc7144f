"""The lot views: the lot list and a lot's report agree, and with two models tested on the same dies each
report shows its own model's bins, yields and accuracies."""

from __future__ import annotations

import statistics
from collections import Counter

import pytest
from sqlalchemy.orm import Session

from app.errors import NotFoundError
from app.services.reporting.lots import list_lots, lot_report
from tests.dashboard.demo import SECOND_MODEL, DemoLot, add_second_model_results, build_demo_lot


def _passed(demo: DemoLot) -> int:
    return sum(1 <= (d.soft_bin or 0) <= 9 for d in demo.tested)


def test_lot_list_counts_agree_with_the_lot_report(session: Session) -> None:
    demo = build_demo_lot(session)
    (row,) = list_lots(session, limit=10, offset=0).items
    report = lot_report(session, "DEMO001")
    assert (
        (row.n_tested, row.n_passed)
        == (report.n_tested, report.n_passed)
        == (len(demo.tested), _passed(demo))
    )
    assert row.n_characterized == report.n_characterized == sum(d.characterized for d in demo.dies.values())
    assert row.latest_job is not None and row.latest_job.job_id == demo.job_id
    assert row.model == report.model == demo.model
    assert [b.count for b in report.pareto] == sorted((b.count for b in report.pareto), reverse=True)
    # The pareto counts every die with a result, the alarmed one (bin 0) too; yields do not.
    assert sum(b.count for b in report.pareto) == len(demo.with_result) == len(demo.tested) + 1
    assert len(report.accuracy_after_pct) == len(demo.tested)
    assert report.accuracy_after_stats.mean == pytest.approx(
        statistics.fmean(100 * (d.accuracy_after or 0) for d in demo.tested)
    )
    yields = [w.yield_pct for w in report.wafers]
    assert report.yield_trend.center == pytest.approx(statistics.fmean(y for y in yields if y is not None))


@pytest.fixture
def two_models(session: Session) -> tuple[DemoLot, DemoLot]:
    first = build_demo_lot(session)
    return first, add_second_model_results(session, first)


def test_each_model_has_its_own_report(session: Session, two_models: tuple[DemoLot, DemoLot]) -> None:
    for demo in two_models:
        report = lot_report(session, "DEMO001", model=demo.model)
        assert report.model == demo.model
        assert {b.soft_bin: b.count for b in report.pareto} == dict(
            Counter(d.soft_bin for d in demo.with_result)
        )
        assert (report.n_tested, report.n_passed) == (len(demo.tested), _passed(demo))
        assert sorted(report.accuracy_after_pct) == pytest.approx(
            sorted(100 * (d.accuracy_after or 0) for d in demo.tested)
        )
        assert sorted(report.accuracy_before_pct) == pytest.approx(
            sorted(100 * (d.accuracy_before or 0) for d in demo.tested)
        )
        # The signature is the die's: characterized dies do not depend on the model.
        assert report.n_characterized == sum(d.characterized for d in demo.dies.values())
        for w in report.wafers:
            on = [d for d in demo.on_wafer(w.number) if d.soft_bin not in (None, 0)]
            assert (w.n_tested, w.n_passed) == (len(on), sum(1 <= (d.soft_bin or 0) <= 9 for d in on))
    first = two_models[0]
    assert {b.soft_bin for b in lot_report(session, "DEMO001", model=SECOND_MODEL).pareto} <= {3, 13}
    assert not {b.soft_bin for b in lot_report(session, "DEMO001", model=first.model).pareto} & {3, 13}


def test_the_report_lists_the_models_and_defaults_to_the_most_tested(
    session: Session, two_models: tuple[DemoLot, DemoLot]
) -> None:
    first, second = two_models
    assert len(first.tested) > len(second.tested) > 0
    report = lot_report(session, "DEMO001")
    assert report.model == first.model
    assert [(m.model, m.n_tested, m.n_passed) for m in report.models] == [
        (first.model, len(first.tested), _passed(first)),
        (second.model, len(second.tested), _passed(second)),
    ]
    assert report.models[1].yield_pct == pytest.approx(100 * _passed(second) / len(second.tested))
    assert lot_report(session, "DEMO001", model=first.model) == report

    (row,) = list_lots(session, limit=10, offset=0).items
    assert (row.model, row.n_tested, row.n_passed) == (first.model, len(first.tested), _passed(first))
    assert [m.model for m in row.models] == [first.model, second.model]
    (row,) = list_lots(session, limit=10, offset=0, model=SECOND_MODEL).items
    assert (row.model, row.n_tested, row.n_passed) == (SECOND_MODEL, len(second.tested), _passed(second))
    with pytest.raises(NotFoundError):
        list_lots(session, limit=10, offset=0, model="nope@1")

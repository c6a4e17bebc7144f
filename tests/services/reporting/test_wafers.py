"""The wafer view: one entry per die in its bin's colour, per model."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from app.errors import NotFoundError
from app.services.reporting.bins import soft_bin_color
from app.services.reporting.wafers import wafer_report
from tests.dashboard.demo import SECOND_MODEL, add_second_model_results, build_demo_lot


def test_wafer_report(session: Session) -> None:
    demo = build_demo_lot(session)
    w = wafer_report(session, "DEMO001", 2)
    assert len(w.dies) == len(demo.on_wafer(2)) == w.n_sites
    assert (w.frame.x_min, w.frame.x_max, w.frame.y_direction) == (-3, 3, "down")
    legend = {b.soft_bin: b.count for b in w.legend}
    assert legend.get(None) == sum(d.soft_bin is None for d in demo.on_wafer(2))
    assert all(d.color == soft_bin_color(d.soft_bin) for d in w.dies)
    with pytest.raises(NotFoundError):
        wafer_report(session, "DEMO001", 4)


def test_each_model_has_its_own_map(session: Session) -> None:
    first = build_demo_lot(session)
    second = add_second_model_results(session, first)
    assert wafer_report(session, "DEMO001", 1).model == first.model
    for demo in (first, second):
        w = wafer_report(session, "DEMO001", 1, model=demo.model)
        assert (w.model, [m.model for m in w.models]) == (demo.model, [first.model, SECOND_MODEL])
        expected = {d.ecid: d for d in demo.on_wafer(1)}
        assert {d.ecid: (d.soft_bin, d.hard_bin) for d in w.dies} == {
            e: (d.soft_bin, d.hard_bin) for e, d in expected.items()
        }
        for d in w.dies:
            after = expected[d.ecid].accuracy_after
            assert d.accuracy_after_pct == (None if after is None else pytest.approx(100 * after))
            assert d.model == demo.model
        assert w.n_tested == sum(d.soft_bin is not None for d in expected.values())

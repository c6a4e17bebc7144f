"""SPC limits and Cpk."""

from __future__ import annotations

import statistics

import pytest

from app.services.reporting.stats import describe, spc_chart


def test_spc_limits_are_mean_plus_minus_three_sigma() -> None:
    chart = spc_chart("yield", "%", [(1, 80.0), (2, 82.0), (3, 78.0), (4, None), (5, 40.0)])
    values = [80.0, 82.0, 78.0, 40.0]
    mean, sigma = statistics.fmean(values), statistics.stdev(values)
    assert chart.center == pytest.approx(mean)
    assert (chart.ucl, chart.lcl) == (pytest.approx(mean + 3 * sigma), pytest.approx(mean - 3 * sigma))
    assert [p.out_of_control for p in chart.points] == [False] * 5
    # With n wafers no point can lie beyond (n-1)/sqrt(n) sigma: an outlier needs 11 or more wafers.
    many = spc_chart("yield", "%", [(w, 80.0) for w in range(1, 12)] + [(12, 0.0)])
    assert [p.wafer for p in many.points if p.out_of_control] == [12]
    one = spc_chart("yield", "%", [(1, 80.0)])
    assert (one.center, one.ucl, one.lcl) == (80.0, None, None)


def test_cpk_uses_the_lower_limit() -> None:
    st = describe([70.0, 80.0, 90.0], lsl=60.0)
    assert st.cpk == pytest.approx((80.0 - 60.0) / (3 * 10.0))
    assert describe([], lsl=60.0).n == 0
    assert describe([75.0], lsl=60.0).cpk is None

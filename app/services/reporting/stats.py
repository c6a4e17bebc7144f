"""Summary statistics of the reports: mean, sigma, Cpk against the accuracy limit, SPC charts."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ACCURACY_LSL_PCT = 70.0
"""Lower limit of calibrated accuracy in the STDF PTR and the Cpk (the thesis' target: above 70 %).
A report limit: the bins themselves are decided by the functional-test step."""


def pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100.0 * fraction


def yield_pct(passed: int, tested: int) -> float | None:
    return 100.0 * passed / tested if tested else None


def mean(values: Iterable[float | None]) -> float | None:
    vs = [v for v in values if v is not None]
    return statistics.fmean(vs) if vs else None


@dataclass(frozen=True)
class Stats:
    n: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    cpk: float | None = None


def describe(values: Sequence[float], *, lsl: float | None = None, usl: float | None = None) -> Stats:
    """Mean, sample standard deviation, range and (with a limit) Cpk of ``values``."""
    if not values:
        return Stats(0, None, None, None, None)
    center = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    cpk = None
    if std and (lsl is not None or usl is not None):
        sides = [(center - lsl) / (3 * std)] if lsl is not None else []
        sides += [(usl - center) / (3 * std)] if usl is not None else []
        cpk = min(sides)
    return Stats(len(values), center, std, min(values), max(values), cpk)


@dataclass(frozen=True)
class SpcPoint:
    wafer: int
    value: float | None
    out_of_control: bool


@dataclass(frozen=True)
class SpcChart:
    """Per-wafer values with centre line and mean +- 3 sigma control limits (sigma across wafers)."""

    metric: str
    units: str
    center: float | None
    ucl: float | None
    lcl: float | None
    points: list[SpcPoint]


def spc_chart(metric: str, units: str, points: Sequence[tuple[int, float | None]]) -> SpcChart:
    values = [v for _, v in points if v is not None]
    center = statistics.fmean(values) if values else None
    sigma = statistics.stdev(values) if len(values) > 1 else None
    ucl = None if center is None or sigma is None else center + 3 * sigma
    lcl = None if center is None or sigma is None else center - 3 * sigma
    return SpcChart(
        metric=metric,
        units=units,
        center=center,
        ucl=ucl,
        lcl=lcl,
        points=[
            SpcPoint(w, v, v is not None and ucl is not None and lcl is not None and not lcl <= v <= ucl)
            for w, v in points
        ],
    )

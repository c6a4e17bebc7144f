"""The wafer view: the soft-bin map and the parametric maps of one wafer with one model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from app.services.reporting.bins import UNTESTED_COLOR, BinCount, pareto, soft_bin_color
from app.services.reporting.rows import die_rows
from app.services.reporting.scope import ModelTested, WhenSeveral, lot_scope, require_wafer
from app.services.reporting.stats import pct
from app.services.reporting.yields import Yields, yields


@dataclass(frozen=True)
class WaferDie:
    ecid: str
    x: int
    y: int
    soft_bin: int | None
    hard_bin: int | None
    passed: bool | None
    color: str
    model: str | None
    accuracy_before_pct: float | None
    accuracy_after_pct: float | None
    offset_spread_mac: float | None
    n_dead_cols: int | None
    n_stuck_cells: int | None
    tester_s: float | None
    test_time_s: float | None
    first_pass: bool | None = None
    n_tests: int = 0
    n_alarms: int = 0
    reason: str | None = None


@dataclass(frozen=True)
class Parametric:
    """A per-die quantity the wafer view can map: ``key`` names the :class:`WaferDie` field."""

    key: str
    label: str
    units: str


PARAMETRICS: tuple[Parametric, ...] = (
    Parametric("offset_spread_mac", "column offset spread", "MAC"),
    Parametric("accuracy_before_pct", "accuracy before calibration", "%"),
    Parametric("accuracy_after_pct", "accuracy after calibration", "%"),
    Parametric("tester_s", "characterization tester time", "s"),
    Parametric("test_time_s", "functional test time", "s"),
    Parametric("n_dead_cols", "dead columns", "columns"),
    Parametric("n_stuck_cells", "stuck cells", "cells"),
)


@dataclass(frozen=True)
class MapFrame:
    """How to draw the map: the die-coordinate ranges and the direction each axis grows."""

    x_min: int
    x_max: int
    y_min: int
    y_max: int
    x_direction: str = "right"
    y_direction: str = "down"
    notch: str = "bottom"


@dataclass(frozen=True)
class WaferReport:
    """One wafer with one model (``model``); ``models`` lists every model tested on the lot.
    ``n_tested`` / ``n_passed`` / ``yield_pct``: final yield (dies with a verdict); ``yields`` adds
    first-pass yield and retest counts. The legend counts bin 0 (alarm, retest) apart from both."""

    lot_id: str
    product: str
    number: int
    model: str | None
    models: list[ModelTested]
    n_sites: int
    n_characterized: int
    n_tested: int
    n_passed: int
    yield_pct: float | None
    frame: MapFrame
    shape: dict[str, Any] | None
    legend: list[BinCount]
    dies: list[WaferDie]
    parametrics: list[Parametric] = field(default_factory=lambda: list(PARAMETRICS))
    yields: Yields | None = None


def wafer_report(session: Session, lot_id: str, number: int, *, model: str | None = None) -> WaferReport:
    """The wafer with ``model`` (default: the only or the most-tested model of the lot)."""
    scope = lot_scope(session, lot_id, model, when_several=WhenSeveral.most_tested)
    lot = scope.lot
    require_wafer(lot, number)
    rows = die_rows(session, lot_id, scope.model, number)
    dies = [
        WaferDie(
            ecid=r.ecid,
            x=r.x,
            y=r.y,
            soft_bin=r.soft_bin,
            hard_bin=r.hard_bin,
            passed=r.passed,
            color=soft_bin_color(r.soft_bin),
            model=r.model,
            accuracy_before_pct=pct(r.accuracy_before),
            accuracy_after_pct=pct(r.accuracy_after),
            offset_spread_mac=r.offset_spread_mac,
            n_dead_cols=r.n_dead_cols,
            n_stuck_cells=r.n_stuck_cells,
            tester_s=r.tester_s,
            test_time_s=r.test_time_s,
            first_pass=r.first_pass,
            n_tests=r.n_tests,
            n_alarms=r.n_alarms,
            reason=r.reason,
        )
        for r in rows
    ]
    legend = pareto(rows)
    n_untested = sum(r.soft_bin is None for r in rows)
    if n_untested:
        legend.append(BinCount(None, "untested", False, n_untested, UNTESTED_COLOR))
    wafer_yields = yields(rows)
    xs, ys = [r.x for r in rows] or [0], [r.y for r in rows] or [0]
    return WaferReport(
        lot_id=lot.lot_id,
        product=lot.product,
        number=number,
        model=scope.model_ref,
        models=scope.models,
        n_sites=len(rows),
        n_characterized=sum(r.signature_version is not None for r in rows),
        n_tested=wafer_yields.n_tested,
        n_passed=wafer_yields.n_passed,
        yield_pct=wafer_yields.yield_pct,
        frame=MapFrame(min(xs), max(xs), min(ys), max(ys)),
        shape=next(w.shape for w in lot.wafers if w.number == number),
        legend=legend,
        dies=dies,
        yields=wafer_yields,
    )

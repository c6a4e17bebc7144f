"""Reporting: what the dashboards show and what the test-data exports contain.

Reads through :mod:`app.db.repositories.reporting` (read-only SQL) and assembles plain dataclasses:
the JSON of the dashboard endpoints, and the records :mod:`app.exports` writes as STDF, E142, CSV and
Parquet.

Conventions every view and export shares:

* Pass: soft bin 1-9 (1 best); 0 is a tester alarm; 10 and up are failures (docs/domain.md section 4).
* A test result without a weight image measured the die *before* calibration (the uncompensated
  model); one with an image measured it *after*. A die's final bins are those of its latest calibrated
  test, or of its latest test when it has no calibrated one. Yield = passing dies / tested dies.
* Accuracy is stored as a fraction; reports show percent.
* Wafer maps: x grows to the right, y grows downward, notch at the bottom.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.db.repositories import dies as dies_repo
from app.db.repositories import lots as lots_repo
from app.db.repositories import reporting as repo
from app.db.repositories import signatures as signatures_repo
from app.db.repositories.reporting import DieSite, LatestTest
from app.db.tables import JobState, Lot
from app.errors import InvalidInputError, NotFoundError, UnavailableError
from app.exports import e142, stdf, tables
from app.exports.records import (
    BinInfo,
    DieRow,
    LotResult,
    ParametricTest,
    PartResult,
    WaferBinMap,
    WaferResult,
)
from hardware.driver import DieAddress

log = logging.getLogger(__name__)

PASS_BINS = (1, 9)
ALARM_BIN = 0
ACCURACY_LSL_PCT = 70.0
"""Lower limit of calibrated accuracy in the STDF PTR and the Cpk (the thesis' target: above 70 %).
A report limit: the bins themselves are decided by the functional-test step."""

# The STDF test plan: the key signature figures and the functional-test accuracies.
TEST_OFFSET_SPREAD = ParametricTest(1001, "column offset spread", "MAC")
TEST_DEAD_COLS = ParametricTest(1002, "dead columns", "columns")
TEST_STUCK_CELLS = ParametricTest(1003, "stuck cells", "cells")
TEST_CHAR_TIME = ParametricTest(1004, "characterization tester time", "s")
TEST_CHAR_READS = ParametricTest(1005, "characterization reads", "reads")
TEST_ACC_BEFORE = ParametricTest(2001, "accuracy before calibration", "%", 0.0, 100.0)
TEST_ACC_AFTER = ParametricTest(2002, "accuracy after calibration", "%", ACCURACY_LSL_PCT, 100.0)
TEST_PLAN: tuple[ParametricTest, ...] = (
    TEST_OFFSET_SPREAD,
    TEST_DEAD_COLS,
    TEST_STUCK_CELLS,
    TEST_CHAR_TIME,
    TEST_CHAR_READS,
    TEST_ACC_BEFORE,
    TEST_ACC_AFTER,
)

UNTESTED_COLOR = "#d0d0d0"
_PASS_COLORS = (
    "#1a9850",
    "#66bd63",
    "#a6d96a",
    "#d9ef8b",
    "#74c476",
    "#31a354",
    "#006837",
    "#b8e186",
    "#7fbc41",
)
_FAIL_COLORS = (
    "#d73027",
    "#f46d43",
    "#fdae61",
    "#c51b7d",
    "#762a83",
    "#4575b4",
    "#e08214",
    "#8c510a",
    "#01665e",
    "#de77ae",
)


def is_pass(soft_bin: int) -> bool:
    return PASS_BINS[0] <= soft_bin <= PASS_BINS[1]


def soft_bin_color(soft_bin: int | None) -> str:
    """The colour of a soft bin on every map and chart (``None``: tested not yet)."""
    if soft_bin is None:
        return UNTESTED_COLOR
    if soft_bin == ALARM_BIN:
        return "#000000"
    if is_pass(soft_bin):
        return _PASS_COLORS[soft_bin - PASS_BINS[0]]
    return _FAIL_COLORS[(soft_bin - PASS_BINS[1] - 1) % len(_FAIL_COLORS)]


def bin_info(soft_bin: int) -> BinInfo:
    if soft_bin == ALARM_BIN:
        return BinInfo(soft_bin, "tester alarm", False)
    if is_pass(soft_bin):
        return BinInfo(soft_bin, f"pass grade {soft_bin}", True)
    return BinInfo(soft_bin, f"fail bin {soft_bin}", False)


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100.0 * fraction


def _yield_pct(passed: int, tested: int) -> float | None:
    return 100.0 * passed / tested if tested else None


# ------------------------------------------------------------------------------------ per-die rows
def _final(tests: Sequence[LatestTest]) -> LatestTest | None:
    return max(tests, key=lambda t: (t.calibrated, t.created_at, t.test_id), default=None)


def _before(tests: Sequence[LatestTest], final: LatestTest | None) -> LatestTest | None:
    """The latest uncompensated test, preferring the final result's model."""
    best: tuple[tuple[bool, datetime, int], LatestTest] | None = None
    for t in tests:
        if t.calibrated:
            continue
        key = (final is not None and t.model_id == final.model_id, t.created_at, t.test_id)
        if best is None or key > best[0]:
            best = (key, t)
    return None if best is None else best[1]


def _die_row(lot_id: str, site: DieSite, tests: Sequence[LatestTest]) -> DieRow:
    final = _final(tests)
    before = _before(tests, final)
    return DieRow(
        lot_id=lot_id,
        wafer=site.wafer,
        x=site.x,
        y=site.y,
        ecid=site.ecid,
        soft_bin=None if final is None else final.soft_bin,
        hard_bin=None if final is None else final.hard_bin,
        passed=None if final is None else is_pass(final.soft_bin),
        model=None if final is None else f"{final.model_name} {final.model_version}",
        accuracy_before=None if before is None else before.accuracy,
        accuracy_after=final.accuracy if final is not None and final.calibrated else None,
        test_time_s=None if final is None else final.test_time_s,
        tested_at=None if final is None else final.created_at,
        signature_version=site.signature_version,
        reads=site.reads,
        tester_s=site.tester_s,
        n_dead_cols=site.n_dead_cols,
        n_stuck_cells=site.n_stuck_cells,
        offset_spread_mac=site.offset_spread_mac,
        characterized_at=site.characterized_at,
    )


def die_rows(session: Session, lot_id: str, wafer: int | None = None) -> list[DieRow]:
    """One row per die of the lot (or wafer), in (wafer, y, x) order."""
    sites = repo.die_sites(session, lot_id, wafer)
    by_die: dict[int, list[LatestTest]] = defaultdict(list)
    for t in repo.latest_tests(session, lot_id, wafer):
        by_die[t.die_id].append(t)
    return [_die_row(lot_id, s, by_die.get(s.die_id, [])) for s in sites]


def _lot(session: Session, lot_id: str) -> Lot:
    lot = lots_repo.get(session, lot_id)
    if lot is None:
        raise NotFoundError(f"no lot {lot_id!r}")
    return lot


def _wafer_numbers(lot: Lot) -> list[int]:
    return [w.number for w in lot.wafers]


def _require_wafer(lot: Lot, number: int) -> None:
    if number not in _wafer_numbers(lot):
        raise NotFoundError(f"lot {lot.lot_id!r} has no wafer {number}")


# ------------------------------------------------------------------------------------- statistics
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
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    cpk = None
    if std and (lsl is not None or usl is not None):
        sides = [(mean - lsl) / (3 * std)] if lsl is not None else []
        sides += [(usl - mean) / (3 * std)] if usl is not None else []
        cpk = min(sides)
    return Stats(len(values), mean, std, min(values), max(values), cpk)


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


# ------------------------------------------------------------------------------------------- lots
@dataclass(frozen=True)
class JobLinkOut:
    job_id: int
    kind: str
    state: str
    created_at: datetime


@dataclass(frozen=True)
class LotRow:
    lot_id: str
    product: str
    created_at: datetime
    n_wafers: int
    n_dies: int
    n_characterized: int
    n_tested: int
    n_passed: int
    yield_pct: float | None
    latest_job: JobLinkOut | None


@dataclass(frozen=True)
class LotList:
    items: list[LotRow]
    total: int
    limit: int
    offset: int


def _job_links(session: Session, lot_ids: Sequence[str]) -> dict[str, list[JobLinkOut]]:
    out: dict[str, list[JobLinkOut]] = defaultdict(list)
    for j in repo.jobs_for_lots(session, lot_ids):
        out[j.lot_id].append(JobLinkOut(j.job_id, j.kind, j.state, j.created_at))
    return out


def list_lots(session: Session, *, limit: int, offset: int) -> LotList:
    """Lots, newest first, with die counts, yield and their latest job."""
    page, total = lots_repo.search(session, limit=limit, offset=offset)
    ids = [lot.lot_id for lot in page]
    counts = repo.lot_counts(session, ids, pass_bins=PASS_BINS)
    jobs = _job_links(session, ids)
    items = []
    for lot in page:
        c = counts[lot.lot_id]
        items.append(
            LotRow(
                lot_id=lot.lot_id,
                product=lot.product,
                created_at=lot.created_at,
                n_wafers=len(lot.wafers),
                n_dies=c.n_dies,
                n_characterized=c.n_characterized,
                n_tested=c.n_tested,
                n_passed=c.n_passed,
                yield_pct=_yield_pct(c.n_passed, c.n_tested),
                latest_job=next(iter(jobs.get(lot.lot_id, [])), None),
            )
        )
    return LotList(items=items, total=total, limit=limit, offset=offset)


@dataclass(frozen=True)
class BinCount:
    soft_bin: int | None
    name: str
    passed: bool
    count: int
    color: str


@dataclass(frozen=True)
class WaferLine:
    number: int
    n_sites: int
    n_characterized: int
    n_tested: int
    n_passed: int
    yield_pct: float | None
    mean_accuracy_before_pct: float | None
    mean_accuracy_after_pct: float | None


@dataclass(frozen=True)
class LotReport:
    lot_id: str
    product: str
    created_at: datetime
    n_dies: int
    n_characterized: int
    n_tested: int
    n_passed: int
    yield_pct: float | None
    wafers: list[WaferLine]
    pareto: list[BinCount]
    accuracy_before_pct: list[float]
    accuracy_after_pct: list[float]
    accuracy_before_stats: Stats
    accuracy_after_stats: Stats
    accuracy_lsl_pct: float
    yield_trend: SpcChart
    accuracy_trend: SpcChart
    jobs: list[JobLinkOut]


def pareto(rows: Iterable[DieRow]) -> list[BinCount]:
    """Soft-bin counts of the tested dies, most frequent first (ties: lower bin first)."""
    counts = Counter(r.soft_bin for r in rows if r.soft_bin is not None)
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [BinCount(b, bin_info(b).name, is_pass(b), n, soft_bin_color(b)) for b, n in ordered]


def _mean(values: Iterable[float | None]) -> float | None:
    vs = [v for v in values if v is not None]
    return statistics.fmean(vs) if vs else None


def lot_report(session: Session, lot_id: str) -> LotReport:
    lot = _lot(session, lot_id)
    rows = die_rows(session, lot_id)
    by_wafer: dict[int, list[DieRow]] = defaultdict(list)
    for r in rows:
        by_wafer[r.wafer].append(r)
    wafers = []
    for w in lot.wafers:
        wr = by_wafer.get(w.number, [])
        tested = [r for r in wr if r.soft_bin is not None]
        n_passed = sum(bool(r.passed) for r in tested)
        wafers.append(
            WaferLine(
                number=w.number,
                n_sites=w.n_sites,
                n_characterized=sum(r.signature_version is not None for r in wr),
                n_tested=len(tested),
                n_passed=n_passed,
                yield_pct=_yield_pct(n_passed, len(tested)),
                mean_accuracy_before_pct=_pct(_mean(r.accuracy_before for r in wr)),
                mean_accuracy_after_pct=_pct(_mean(r.accuracy_after for r in wr)),
            )
        )
    before = [100.0 * r.accuracy_before for r in rows if r.accuracy_before is not None]
    after = [100.0 * r.accuracy_after for r in rows if r.accuracy_after is not None]
    n_tested = sum(w.n_tested for w in wafers)
    n_passed = sum(w.n_passed for w in wafers)
    return LotReport(
        lot_id=lot.lot_id,
        product=lot.product,
        created_at=lot.created_at,
        n_dies=len(rows),
        n_characterized=sum(w.n_characterized for w in wafers),
        n_tested=n_tested,
        n_passed=n_passed,
        yield_pct=_yield_pct(n_passed, n_tested),
        wafers=wafers,
        pareto=pareto(rows),
        accuracy_before_pct=before,
        accuracy_after_pct=after,
        accuracy_before_stats=describe(before),
        accuracy_after_stats=describe(after, lsl=ACCURACY_LSL_PCT),
        accuracy_lsl_pct=ACCURACY_LSL_PCT,
        yield_trend=spc_chart("yield", "%", [(w.number, w.yield_pct) for w in wafers]),
        accuracy_trend=spc_chart(
            "mean accuracy after calibration", "%", [(w.number, w.mean_accuracy_after_pct) for w in wafers]
        ),
        jobs=_job_links(session, [lot.lot_id]).get(lot.lot_id, []),
    )


# ----------------------------------------------------------------------------------------- wafers
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
    lot_id: str
    product: str
    number: int
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


def wafer_report(session: Session, lot_id: str, number: int) -> WaferReport:
    lot = _lot(session, lot_id)
    _require_wafer(lot, number)
    rows = die_rows(session, lot_id, number)
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
            accuracy_before_pct=_pct(r.accuracy_before),
            accuracy_after_pct=_pct(r.accuracy_after),
            offset_spread_mac=r.offset_spread_mac,
            n_dead_cols=r.n_dead_cols,
            n_stuck_cells=r.n_stuck_cells,
            tester_s=r.tester_s,
            test_time_s=r.test_time_s,
        )
        for r in rows
    ]
    legend = pareto(rows)
    n_untested = sum(r.soft_bin is None for r in rows)
    if n_untested:
        legend.append(BinCount(None, "untested", False, n_untested, UNTESTED_COLOR))
    n_tested = len(rows) - n_untested
    n_passed = sum(bool(r.passed) for r in rows)
    xs, ys = [r.x for r in rows] or [0], [r.y for r in rows] or [0]
    return WaferReport(
        lot_id=lot.lot_id,
        product=lot.product,
        number=number,
        n_sites=len(rows),
        n_characterized=sum(r.signature_version is not None for r in rows),
        n_tested=n_tested,
        n_passed=n_passed,
        yield_pct=_yield_pct(n_passed, n_tested),
        frame=MapFrame(min(xs), max(xs), min(ys), max(ys)),
        shape=next(w.shape for w in lot.wafers if w.number == number),
        legend=legend,
        dies=dies,
    )


# ------------------------------------------------------------------------------------------- dies
@dataclass(frozen=True)
class SignatureOut:
    version: int
    is_current: bool
    sha256: str
    reads: int
    tester_s: float
    n_dead_cols: int
    n_stuck_cells: int
    offset_spread_mac: float
    created_at: datetime


@dataclass(frozen=True)
class SignatureDetail:
    """The decoded current signature, per macro and physical column (spares last).

    ``gain`` (ratio) and ``offset_mac`` are ``[macro][column]``; ``dead_cols`` is 1 for a dead bit
    line; ``stuck_cells`` counts the stuck cells of each column. ``error`` says why nothing was decoded.
    """

    n_macros: int = 0
    rows: int = 0
    data_cols: int = 0
    spare_cols: int = 0
    gain: list[list[float]] = field(default_factory=list)
    offset_mac: list[list[float]] = field(default_factory=list)
    dead_cols: list[list[int]] = field(default_factory=list)
    stuck_cells: list[list[int]] = field(default_factory=list)
    noise_sigma_mac: list[float] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def decode_signature(blob: bytes) -> SignatureDetail:
    """The one place that reads a signature blob (``app.calibration.signature.Signature``) for reports."""
    try:
        import numpy as np

        from app.calibration.signature import Signature
    except ImportError as e:  # the calibration package is optional for reporting
        return SignatureDetail(error=f"signature decoder unavailable: {e}")
    try:
        sig = Signature.from_bytes(blob)
    except ValueError as e:
        log.warning("cannot decode signature blob (%d bytes): %s", len(blob), e)
        return SignatureDetail(error=f"cannot decode the signature: {e}")
    g = sig.geometry
    stuck = np.zeros((g.n_macros, g.phys_cols), dtype=np.int64)
    np.add.at(stuck, (sig.stuck.macro, sig.stuck.col), 1)
    return SignatureDetail(
        n_macros=g.n_macros,
        rows=g.rows,
        data_cols=g.cols,
        spare_cols=g.spare_cols,
        gain=np.round(sig.gain.astype(float), 4).tolist(),
        offset_mac=np.round(sig.offset_mac.astype(float), 3).tolist(),
        dead_cols=sig.dead_cols.astype(int).tolist(),
        stuck_cells=stuck.tolist(),
        noise_sigma_mac=np.round(sig.noise_sigma_mac.astype(float), 3).tolist(),
        summary={k: float(v) for k, v in sig.summary().items()},
    )


@dataclass(frozen=True)
class ImageOut:
    model: str
    model_version: str
    signature_version: int
    content_sha256: str
    size_bytes: int
    created_at: datetime


@dataclass(frozen=True)
class FunctionalTestOut:
    model: str
    model_version: str
    calibrated: bool
    accuracy_pct: float
    hard_bin: int
    soft_bin: int
    passed: bool
    color: str
    test_time_s: float
    created_at: datetime


@dataclass(frozen=True)
class DieReport:
    ecid: str
    lot_id: str
    wafer: int
    x: int
    y: int
    created_at: datetime
    final: DieRow
    final_color: str
    signature: SignatureOut | None
    signature_history: list[SignatureOut]
    signature_detail: SignatureDetail | None
    images: list[ImageOut]
    tests: list[FunctionalTestOut]


def die_report(session: Session, ecid: str) -> DieReport:
    try:
        address = DieAddress.from_ecid(ecid)
    except ValueError as e:
        raise InvalidInputError(str(e), code="invalid_ecid") from e
    die = dies_repo.get_by_ecid(session, ecid)
    if die is None:
        raise NotFoundError(f"no die {ecid!r}")
    current = signatures_repo.current(session, die.id)
    history = [
        SignatureOut(
            s.version,
            s.is_current,
            s.sha256,
            s.reads,
            s.tester_s,
            s.n_dead_cols,
            s.n_stuck_cells,
            s.offset_spread_mac,
            s.created_at,
        )
        for s in signatures_repo.history(session, die.id)
    ]
    row = next(r for r in die_rows(session, address.lot_id, address.wafer) if r.ecid == ecid)
    tests = [
        FunctionalTestOut(
            model=m.name,
            model_version=m.version,
            calibrated=t.image_id is not None,
            accuracy_pct=100.0 * t.accuracy,
            hard_bin=t.hard_bin,
            soft_bin=t.soft_bin,
            passed=is_pass(t.soft_bin),
            color=soft_bin_color(t.soft_bin),
            test_time_s=t.test_time_s,
            created_at=t.created_at,
        )
        for t, m in repo.tests_for_die(session, die.id)
    ]
    images = [
        ImageOut(name, version, sig_version, i.content_sha256, i.size_bytes, i.created_at)
        for i, name, version, sig_version in repo.images_for_die(session, die.id)
    ]
    return DieReport(
        ecid=die.ecid,
        lot_id=die.wafer.lot_id,
        wafer=die.wafer.number,
        x=die.x,
        y=die.y,
        created_at=die.created_at,
        final=row,
        final_color=soft_bin_color(row.soft_bin),
        signature=next((s for s in history if s.is_current), None),
        signature_history=history,
        signature_detail=None if current is None else decode_signature(current.blob),
        images=images,
        tests=tests,
    )


# ------------------------------------------------------------------------------------------- jobs
TERMINAL_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})


@dataclass(frozen=True)
class StepProgress:
    step: str
    state: str
    count: int


@dataclass(frozen=True)
class JobItemError:
    ecid: str
    step: str
    attempts: int
    error: str


@dataclass(frozen=True)
class JobReport:
    id: int
    kind: str
    state: str
    terminal: bool
    params: dict[str, Any]
    counters: dict[str, Any]
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    n_items: int
    n_done: int
    progress: float | None
    items: list[StepProgress]
    errors: list[JobItemError]


def job_report(session: Session, job_id: int) -> JobReport:
    job = repo.get_job(session, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    counts = repo.job_item_counts(session, job_id)
    n_items = sum(counts.values())
    n_done = sum(n for (_, state), n in counts.items() if state in TERMINAL_STATES)
    return JobReport(
        id=job.id,
        kind=job.kind,
        state=job.state,
        terminal=job.state in TERMINAL_STATES,
        params=dict(job.params),
        counters=dict(job.counters or {}),
        created_by=job.created_by,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        n_items=n_items,
        n_done=n_done,
        progress=n_done / n_items if n_items else (1.0 if job.state in TERMINAL_STATES else None),
        items=[StepProgress(step, state, n) for (step, state), n in sorted(counts.items())],
        errors=[JobItemError(*e) for e in repo.job_item_errors(session, job_id, limit=20)],
    )


@dataclass(frozen=True)
class JobSummary:
    id: int
    kind: str
    state: str
    created_by: str
    created_at: datetime
    finished_at: datetime | None


def recent_jobs(session: Session, *, limit: int) -> list[JobSummary]:
    return [
        JobSummary(j.id, j.kind, j.state, j.created_by, j.created_at, j.finished_at)
        for j in repo.recent_jobs(session, limit=limit)
    ]


# ---------------------------------------------------------------------------------------- exports
def _ms(seconds: float | None) -> int:
    return 0 if seconds is None or not math.isfinite(seconds) else round(1000.0 * seconds)


def _part(r: DieRow) -> PartResult:
    assert r.soft_bin is not None and r.hard_bin is not None
    values: list[tuple[ParametricTest, float | None]] = [
        (TEST_OFFSET_SPREAD, r.offset_spread_mac),
        (TEST_DEAD_COLS, None if r.n_dead_cols is None else float(r.n_dead_cols)),
        (TEST_STUCK_CELLS, None if r.n_stuck_cells is None else float(r.n_stuck_cells)),
        (TEST_CHAR_TIME, r.tester_s),
        (TEST_CHAR_READS, None if r.reads is None else float(r.reads)),
        (TEST_ACC_BEFORE, _pct(r.accuracy_before)),
        (TEST_ACC_AFTER, _pct(r.accuracy_after)),
    ]
    return PartResult(
        ecid=r.ecid,
        x=r.x,
        y=r.y,
        hard_bin=r.hard_bin,
        soft_bin=r.soft_bin,
        passed=bool(r.passed),
        test_time_ms=_ms((r.tester_s or 0.0) + (r.test_time_s or 0.0)),
        results=tuple((t.number, v) for t, v in values if v is not None),
        text=r.model or "",
    )


def _span(rows: Sequence[DieRow], default: datetime) -> tuple[datetime, datetime]:
    times = [t for r in rows for t in (r.characterized_at, r.tested_at) if t is not None]
    return (min(times), max(times)) if times else (default, default)


def lot_result(session: Session, lot_id: str, *, version: str = "") -> LotResult:
    """The lot's test data as STDF records: every die with a functional-test result is a part."""
    lot = _lot(session, lot_id)
    rows = die_rows(session, lot_id)
    by_wafer: dict[int, list[DieRow]] = defaultdict(list)
    for r in rows:
        by_wafer[r.wafer].append(r)
    wafers = []
    for number in _wafer_numbers(lot):
        tested = [r for r in by_wafer.get(number, []) if r.soft_bin is not None]
        # Parts in test order, as a tester would have written them.
        tested.sort(key=lambda r: (r.tested_at or lot.created_at, r.y, r.x))
        start, finish = _span(by_wafer.get(number, []), lot.created_at)
        wafers.append(
            WaferResult(
                number=number,
                wafer_id=f"{lot_id}-W{number:02d}",
                started_at=start,
                finished_at=finish,
                parts=tuple(_part(r) for r in tested),
            )
        )
    start, finish = _span(rows, lot.created_at)
    bins = {r.soft_bin: bin_info(r.soft_bin) for r in rows if r.soft_bin is not None}
    hard = {
        r.hard_bin: BinInfo(r.hard_bin, f"hard bin {r.hard_bin}", bool(r.passed))
        for r in rows
        if r.hard_bin is not None
    }
    return LotResult(
        lot_id=lot.lot_id,
        product=lot.product,
        setup_at=lot.created_at,
        started_at=start,
        finished_at=finish,
        tests=TEST_PLAN,
        wafers=tuple(wafers),
        soft_bins=bins,
        hard_bins=hard,
        job_rev=version,
        exec_ver=version,
    )


def lot_stdf(session: Session, lot_id: str, *, version: str = "") -> bytes:
    return stdf.write_stdf(lot_result(session, lot_id, version=version))


def wafer_bin_map(session: Session, lot_id: str, number: int) -> WaferBinMap:
    lot = _lot(session, lot_id)
    _require_wafer(lot, number)
    rows = die_rows(session, lot_id, number)
    return WaferBinMap(
        lot_id=lot_id,
        wafer_number=number,
        substrate_id=f"{lot_id}-W{number:02d}",
        bins={(r.x, r.y): r.soft_bin for r in rows},
        bin_info={r.soft_bin: bin_info(r.soft_bin) for r in rows if r.soft_bin is not None},
        product=lot.product,
    )


def wafer_e142(session: Session, lot_id: str, number: int) -> bytes:
    return e142.write_e142(wafer_bin_map(session, lot_id, number))


def lot_dies_csv(session: Session, lot_id: str) -> bytes:
    _lot(session, lot_id)
    return tables.write_csv(die_rows(session, lot_id))


def lot_dies_parquet(session: Session, lot_id: str) -> bytes:
    _lot(session, lot_id)
    if not tables.parquet_available():
        raise UnavailableError(
            "Parquet export needs pyarrow, which is not installed", code="parquet_unavailable"
        )
    return tables.write_parquet(die_rows(session, lot_id))

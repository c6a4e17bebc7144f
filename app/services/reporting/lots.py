"""The lot views: every lot with its yield, and one lot's report (pareto, accuracy, SPC, wafers, jobs),
each of one model."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from app.db.repositories import lots as lots_repo
from app.db.repositories import reporting as repo
from app.db.repositories.reporting import ModelCounts
from app.exports.records import DieRow
from app.services.reporting.bins import ALARM_BIN, PASS_BINS, BinCount, pareto
from app.services.reporting.rows import die_rows
from app.services.reporting.scope import (
    ModelTested,
    WhenSeveral,
    default_model,
    find_model,
    lot_scope,
    model_tested,
    rank,
)
from app.services.reporting.stats import (
    ACCURACY_LSL_PCT,
    SpcChart,
    Stats,
    describe,
    mean,
    pct,
    spc_chart,
    yield_pct,
)
from app.services.reporting.yields import Yields, yields


@dataclass(frozen=True)
class JobLinkOut:
    job_id: int
    kind: str
    state: str
    created_at: datetime


@dataclass(frozen=True)
class LotRow:
    """A lot in the list; the tested / passing counts and yields are of ``model``: ``yield_pct`` final
    (dies with a verdict), ``first_pass_yield_pct`` of the first test events (alarms included)."""

    lot_id: str
    product: str
    created_at: datetime
    n_wafers: int
    n_dies: int
    n_characterized: int
    model: str | None
    n_tested: int
    n_passed: int
    yield_pct: float | None
    models: list[ModelTested]
    latest_job: JobLinkOut | None
    first_pass_yield_pct: float | None = None


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


def list_lots(session: Session, *, limit: int, offset: int, model: str | None = None) -> LotList:
    """Lots, newest first, with die counts, the yield of ``model`` (default: each lot's most-tested
    model), the models tested and their latest job."""
    chosen = find_model(session, model) if model is not None else None
    page, total = lots_repo.search(session, limit=limit, offset=offset)
    ids = [lot.lot_id for lot in page]
    counts = repo.lot_counts(session, ids)
    by_lot: dict[str, list[ModelCounts]] = defaultdict(list)
    for mc in repo.model_counts(session, ids, pass_bins=PASS_BINS, alarm_bin=ALARM_BIN):
        by_lot[mc.lot_id].append(mc)
    first = repo.first_tests(session, ids, pass_bins=PASS_BINS, alarm_bin=ALARM_BIN)
    jobs = _job_links(session, ids)
    items = []
    for lot in page:
        c = counts[lot.lot_id]
        ranked = rank(by_lot.get(lot.lot_id, []))
        shown = chosen or default_model(lot.lot_id, ranked, WhenSeveral.most_tested)
        of_shown = next((m for m in ranked if shown is not None and m.model_id == shown.id), None)
        n_tested, n_passed = (0, 0) if of_shown is None else (of_shown.n_tested, of_shown.n_passed)
        n_first_tested, n_first_passed = (
            (0, 0) if shown is None else first.get((lot.lot_id, shown.id), (0, 0))
        )
        items.append(
            LotRow(
                lot_id=lot.lot_id,
                product=lot.product,
                created_at=lot.created_at,
                n_wafers=len(lot.wafers),
                n_dies=c.n_dies,
                n_characterized=c.n_characterized,
                model=None if shown is None else shown.ref,
                n_tested=n_tested,
                n_passed=n_passed,
                yield_pct=yield_pct(n_passed, n_tested),
                models=[model_tested(m) for m in ranked],
                latest_job=next(iter(jobs.get(lot.lot_id, [])), None),
                first_pass_yield_pct=yield_pct(n_first_passed, n_first_tested),
            )
        )
    return LotList(items=items, total=total, limit=limit, offset=offset)


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
    first_pass_yield_pct: float | None = None
    n_retest_pending: int = 0


@dataclass(frozen=True)
class LotReport:
    """One lot with one model (``model``); ``models`` lists every model tested on the lot.
    ``n_tested`` / ``n_passed`` / ``yield_pct`` are the final yield's; ``yields`` adds first-pass
    yield and retest counts (:mod:`.yields`). Accuracy lists and statistics hold measured values
    only: an alarm or die fault measures nothing and is not in them."""

    lot_id: str
    product: str
    created_at: datetime
    model: str | None
    models: list[ModelTested]
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
    yields: Yields | None = None


def lot_report(session: Session, lot_id: str, *, model: str | None = None) -> LotReport:
    """The lot's report with ``model`` (default: the only or the most-tested model of the lot)."""
    scope = lot_scope(session, lot_id, model, when_several=WhenSeveral.most_tested)
    lot = scope.lot
    rows = die_rows(session, lot_id, scope.model)
    by_wafer: dict[int, list[DieRow]] = defaultdict(list)
    for r in rows:
        by_wafer[r.wafer].append(r)
    wafers = []
    for w in lot.wafers:
        wr = by_wafer.get(w.number, [])
        wy = yields(wr)
        wafers.append(
            WaferLine(
                number=w.number,
                n_sites=w.n_sites,
                n_characterized=sum(r.signature_version is not None for r in wr),
                n_tested=wy.n_tested,
                n_passed=wy.n_passed,
                yield_pct=wy.yield_pct,
                mean_accuracy_before_pct=pct(mean(r.accuracy_before for r in wr)),
                mean_accuracy_after_pct=pct(mean(r.accuracy_after for r in wr)),
                first_pass_yield_pct=wy.first_pass_yield_pct,
                n_retest_pending=wy.n_retest_pending,
            )
        )
    before = [100.0 * r.accuracy_before for r in rows if r.accuracy_before is not None]
    after = [100.0 * r.accuracy_after for r in rows if r.accuracy_after is not None]
    lot_yields = yields(rows)
    n_tested, n_passed = lot_yields.n_tested, lot_yields.n_passed
    return LotReport(
        lot_id=lot.lot_id,
        product=lot.product,
        created_at=lot.created_at,
        model=scope.model_ref,
        models=scope.models,
        n_dies=len(rows),
        n_characterized=sum(w.n_characterized for w in wafers),
        n_tested=n_tested,
        n_passed=n_passed,
        yield_pct=yield_pct(n_passed, n_tested),
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
        yields=lot_yields,
    )

"""One flat row per die for one model: the dies of the dashboards, the parts of the exports.

A die's test history with a model is a sequence of events: verdicts (its calibrated functional
tests and die faults; or, for a die never tested after calibration, its tests before calibration)
and tester alarms (bin 0: "retest", never a verdict). Its row shows the final verdict, or its
latest alarm when it has none, and the counts first-pass and final yields are made of
(:mod:`.yields`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy.orm import Session

from app.db.repositories import reporting as repo
from app.db.repositories.reporting import DieSite, TestRecord
from app.exports.records import ALARM_BIN, DieRow
from app.services.reporting.bins import is_pass
from app.services.reporting.scope import ModelChoice


def _last(tests: Sequence[TestRecord]) -> TestRecord | None:
    return max(tests, key=lambda t: (t.created_at, t.test_id), default=None)


def _history(tests: Sequence[TestRecord]) -> tuple[list[TestRecord], list[TestRecord]]:
    """(verdicts, alarms) of one die with one model, oldest first. Verdicts are the calibrated and
    unmeasured (die fault) results; a die that has none counts its results before calibration."""
    alarms = [t for t in tests if t.soft_bin == ALARM_BIN]
    others = [t for t in tests if t.soft_bin != ALARM_BIN]
    verdicts = [t for t in others if t.calibrated or t.accuracy is None] or others
    return verdicts, alarms


def die_row(lot_id: str, site: DieSite, model: ModelChoice | None, tests: Sequence[TestRecord]) -> DieRow:
    """The die's results with ``model``; ``tests`` are its test records with that model."""
    before = _last([t for t in tests if not t.calibrated and t.accuracy is not None])
    after = _last([t for t in tests if t.calibrated and t.accuracy is not None])
    verdicts, alarms = _history(tests)
    final = _last(verdicts)
    shown = final or _last(alarms)
    events = sorted(verdicts + alarms, key=lambda t: (t.created_at, t.test_id))
    first = events[0] if events else None
    return DieRow(
        lot_id=lot_id,
        wafer=site.wafer,
        x=site.x,
        y=site.y,
        ecid=site.ecid,
        model=None if model is None else model.ref,
        soft_bin=None if shown is None else shown.soft_bin,
        hard_bin=None if shown is None else shown.hard_bin,
        passed=None if final is None else is_pass(final.soft_bin),
        accuracy_before=None if before is None else before.accuracy,
        accuracy_after=None if after is None else after.accuracy,
        test_time_s=None if shown is None else shown.test_time_s,
        tested_at=None if shown is None else shown.created_at,
        site=None if shown is None else shown.site,
        signature_version=site.signature_version,
        reads=site.reads,
        retries=site.retries,
        tester_s=site.tester_s,
        n_dead_cols=site.n_dead_cols,
        n_stuck_cells=site.n_stuck_cells,
        offset_spread_mac=site.offset_spread_mac,
        characterized_at=site.characterized_at,
        first_pass=None if first is None else first.soft_bin != ALARM_BIN and is_pass(first.soft_bin),
        n_tests=len(events),
        n_alarms=len(alarms),
        alarm_code=None if shown is None else shown.alarm_code,
        reason=None if shown is None else shown.reason,
    )


def die_rows(
    session: Session,
    lot_id: str,
    model: ModelChoice | None,
    wafer: int | None = None,
    *,
    die_id: int | None = None,
) -> list[DieRow]:
    """One row per die of the lot (or of one wafer, or the one die ``die_id``) with ``model``, in
    (wafer, y, x) order. ``model`` ``None`` (a lot without tests): no die is tested."""
    sites = repo.die_sites(session, lot_id, wafer, die_id=die_id)
    by_die: dict[int, list[TestRecord]] = defaultdict(list)
    if model is not None:
        for t in repo.model_tests(session, lot_id, wafer, model_id=model.id, die_id=die_id):
            by_die[t.die_id].append(t)
    return [die_row(lot_id, s, model, by_die.get(s.die_id, [])) for s in sites]

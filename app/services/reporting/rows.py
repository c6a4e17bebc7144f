"""One flat row per die for one model: the dies of the dashboards, the parts of the exports."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy.orm import Session

from app.db.repositories import reporting as repo
from app.db.repositories.reporting import DieSite, LatestTest
from app.exports.records import DieRow
from app.services.reporting.bins import is_pass
from app.services.reporting.scope import ModelChoice


def _latest(tests: Sequence[LatestTest], *, calibrated: bool) -> LatestTest | None:
    return max(
        (t for t in tests if t.calibrated == calibrated),
        key=lambda t: (t.created_at, t.test_id),
        default=None,
    )


def die_row(lot_id: str, site: DieSite, model: ModelChoice | None, tests: Sequence[LatestTest]) -> DieRow:
    """The die's results with ``model``; ``tests`` are its latest tests with that model."""
    before = _latest(tests, calibrated=False)
    after = _latest(tests, calibrated=True)
    final = after or before
    return DieRow(
        lot_id=lot_id,
        wafer=site.wafer,
        x=site.x,
        y=site.y,
        ecid=site.ecid,
        model=None if model is None else model.ref,
        soft_bin=None if final is None else final.soft_bin,
        hard_bin=None if final is None else final.hard_bin,
        passed=None if final is None else is_pass(final.soft_bin),
        accuracy_before=None if before is None else before.accuracy,
        accuracy_after=None if after is None else after.accuracy,
        test_time_s=None if final is None else final.test_time_s,
        tested_at=None if final is None else final.created_at,
        site=None if final is None else final.site,
        signature_version=site.signature_version,
        reads=site.reads,
        retries=site.retries,
        tester_s=site.tester_s,
        n_dead_cols=site.n_dead_cols,
        n_stuck_cells=site.n_stuck_cells,
        offset_spread_mac=site.offset_spread_mac,
        characterized_at=site.characterized_at,
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
    by_die: dict[int, list[LatestTest]] = defaultdict(list)
    if model is not None:
        for t in repo.latest_tests(session, lot_id, wafer, model_id=model.id, die_id=die_id):
            by_die[t.die_id].append(t)
    return [die_row(lot_id, s, model, by_die.get(s.die_id, [])) for s in sites]

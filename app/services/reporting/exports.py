"""The test-data files of one lot and one model: STDF V4, SEMI E142 wafer maps, per-die CSV and Parquet.

Each file holds one model's results. Without a model named, a lot tested with several models is refused
(422 ``model_required``, see :mod:`.scope`): a yield tool reading the file cannot tell otherwise.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from app.db.repositories import reporting as repo
from app.db.tables import Provenance
from app.errors import UnavailableError
from app.exports import e142, stdf, tables
from app.exports.records import (
    BinInfo,
    DieRow,
    LotResult,
    ParametricTest,
    PartResult,
    SiteDescription,
    WaferBinMap,
    WaferResult,
)
from app.services.reporting.bins import bin_info
from app.services.reporting.rows import die_rows
from app.services.reporting.scope import LotScope, WhenSeveral, lot_scope, require_wafer
from app.services.reporting.stats import ACCURACY_LSL_PCT, pct

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


@dataclass(frozen=True)
class ExportFile:
    """A file's bytes and the model (``name@version``) whose results it holds (``None``: no test yet)."""

    data: bytes
    model: str | None


def _scope(session: Session, lot_id: str, model: str | None) -> LotScope:
    return lot_scope(session, lot_id, model, when_several=WhenSeveral.require)


def _ms(seconds: float | None) -> int:
    return 0 if seconds is None or not math.isfinite(seconds) else round(1000.0 * seconds)


def stdf_site(site: int | None) -> int:
    """The STDF SITE_NUM of a station test site: index + 1 (1 when not recorded)."""
    return 1 if site is None else site + 1


def _part(r: DieRow) -> PartResult:
    assert r.soft_bin is not None and r.hard_bin is not None
    values: list[tuple[ParametricTest, float | None]] = [
        (TEST_OFFSET_SPREAD, r.offset_spread_mac),
        (TEST_DEAD_COLS, None if r.n_dead_cols is None else float(r.n_dead_cols)),
        (TEST_STUCK_CELLS, None if r.n_stuck_cells is None else float(r.n_stuck_cells)),
        (TEST_CHAR_TIME, r.tester_s),
        (TEST_CHAR_READS, None if r.reads is None else float(r.reads)),
        (TEST_ACC_BEFORE, pct(r.accuracy_before)),
        (TEST_ACC_AFTER, pct(r.accuracy_after)),
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
        site=stdf_site(r.site),
        abnormal_end=r.retest_pending,
    )


def _span(rows: Sequence[DieRow], default: datetime) -> tuple[datetime, datetime]:
    times = [t for r in rows for t in (r.characterized_at, r.tested_at) if t is not None]
    return (min(times), max(times)) if times else (default, default)


@dataclass(frozen=True)
class _Equipment:
    """MIR tester fields and the SDR, from the recorded provenance (defaults: nothing recorded)."""

    sites: SiteDescription
    node_name: str = "cimcal"
    tester_type: str = "cimcal"
    serial_number: str = ""
    setup_id: str = ""


def _equipment(testers: Sequence[tuple[Provenance, int]], sites: Sequence[int]) -> _Equipment:
    """The tester that ran most of the tests names the MIR (host, vendor and model, serial, options
    hash); the SDR lists the parts' sites with the testers, resources and drivers behind them."""
    numbers = tuple(sorted(set(sites))) or (stdf_site(None),)
    on_sites = [p for p, _ in testers if stdf_site(p.site) in numbers]
    resources = {stdf_site(p.site): p.resource for p in on_sites if p.resource}
    description = SiteDescription(
        site_numbers=numbers,
        card_type=", ".join(sorted({f"{p.vendor} {p.model}" for p in on_sites})),
        card_id=", ".join(f"{n}={r}" for n, r in sorted(resources.items())),
        extra_type=", ".join(sorted({f"cimcal driver {p.driver}" for p in on_sites})),
        extra_id=", ".join(sorted({p.driver_version for p in on_sites})),
    )
    if not testers:
        return _Equipment(description)
    main = testers[0][0]
    return _Equipment(
        description,
        node_name=main.host,
        tester_type=f"{main.vendor} {main.model}",
        serial_number=main.serial,
        setup_id=main.options_sha256,
    )


def lot_result(session: Session, lot_id: str, *, model: str | None = None, version: str = "") -> LotResult:
    """The lot's test data with one model as STDF records: every die with a functional-test result with
    that model is a part, on the site that tested it. MIR ``JOB_NAM`` / ``JOB_REV`` are the model's
    name and version; ``version`` (the service's) is ``EXEC_VER``; the tester fields of the MIR and
    the SDR come from the recorded provenance (:func:`_equipment`)."""
    return _lot_result(session, _scope(session, lot_id, model), version)


def _lot_result(session: Session, scope: LotScope, version: str) -> LotResult:
    lot = scope.lot
    lot_id = lot.lot_id
    rows = die_rows(session, lot_id, scope.model)
    by_wafer: dict[int, list[DieRow]] = defaultdict(list)
    for r in rows:
        by_wafer[r.wafer].append(r)
    wafers = []
    for w in lot.wafers:
        tested = [r for r in by_wafer.get(w.number, []) if r.soft_bin is not None]
        # Parts in test order, as a tester would have written them.
        tested.sort(key=lambda r: (r.tested_at or lot.created_at, r.y, r.x))
        start, finish = _span(by_wafer.get(w.number, []), lot.created_at)
        wafers.append(
            WaferResult(
                number=w.number,
                wafer_id=f"{lot_id}-W{w.number:02d}",
                started_at=start,
                finished_at=finish,
                parts=tuple(_part(r) for r in tested),
                retested=sum(r.n_tests > 1 for r in tested),
                aborts=sum(r.n_alarms for r in tested),
            )
        )
    start, finish = _span(rows, lot.created_at)
    bins = {r.soft_bin: bin_info(r.soft_bin) for r in rows if r.soft_bin is not None}
    hard = {
        r.hard_bin: BinInfo(
            r.hard_bin,
            bin_info(r.hard_bin).name if r.retest_pending else f"hard bin {r.hard_bin}",
            bool(r.passed),
        )
        for r in rows
        if r.hard_bin is not None
    }
    chosen = scope.model
    testers = [] if chosen is None else repo.lot_testers(session, lot_id, chosen.id)
    parts = [p for w in wafers for p in w.parts]
    equipment = _equipment(testers, [p.site for p in parts])
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
        job_name="cimcal" if chosen is None else chosen.name,
        job_rev=version if chosen is None else chosen.version,
        exec_ver=version,
        node_name=equipment.node_name,
        tester_type=equipment.tester_type,
        serial_number=equipment.serial_number,
        setup_id=equipment.setup_id,
        sites=equipment.sites,
    )


def lot_stdf(session: Session, lot_id: str, *, model: str | None = None, version: str = "") -> ExportFile:
    scope = _scope(session, lot_id, model)
    return ExportFile(stdf.write_stdf(_lot_result(session, scope, version)), scope.model_ref)


def wafer_bin_map(session: Session, lot_id: str, number: int, *, model: str | None = None) -> WaferBinMap:
    scope = _scope(session, lot_id, model)
    require_wafer(scope.lot, number)
    rows = die_rows(session, lot_id, scope.model, number)
    return WaferBinMap(
        lot_id=lot_id,
        wafer_number=number,
        substrate_id=f"{lot_id}-W{number:02d}",
        bins={(r.x, r.y): r.soft_bin for r in rows},
        bin_info={r.soft_bin: bin_info(r.soft_bin) for r in rows if r.soft_bin is not None},
        product=scope.lot.product,
        model=scope.model_ref or "",
    )


def wafer_e142(session: Session, lot_id: str, number: int, *, model: str | None = None) -> ExportFile:
    wafer = wafer_bin_map(session, lot_id, number, model=model)
    return ExportFile(e142.write_e142(wafer), wafer.model or None)


def _rows(session: Session, lot_id: str, model: str | None) -> tuple[list[DieRow], str | None]:
    scope = _scope(session, lot_id, model)
    return die_rows(session, lot_id, scope.model), scope.model_ref


def lot_dies_csv(session: Session, lot_id: str, *, model: str | None = None) -> ExportFile:
    rows, ref = _rows(session, lot_id, model)
    return ExportFile(tables.write_csv(rows), ref)


def lot_dies_parquet(session: Session, lot_id: str, *, model: str | None = None) -> ExportFile:
    rows, ref = _rows(session, lot_id, model)
    if not tables.parquet_available():
        raise UnavailableError(
            "Parquet export needs pyarrow, which is not installed", code="parquet_unavailable"
        )
    return ExportFile(tables.write_parquet(rows), ref)

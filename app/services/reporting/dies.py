"""The die view: final results with one model, the signature (decoded), weight images, every test."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from app.db.repositories import dies as dies_repo
from app.db.repositories import provenance as provenance_repo
from app.db.repositories import reporting as repo
from app.db.repositories import signatures as signatures_repo
from app.db.tables import Provenance
from app.errors import InvalidInputError, NotFoundError
from app.exports.records import DieRow
from app.services.reporting.bins import ALARM_BIN, PASS_BINS, is_pass, soft_bin_color
from app.services.reporting.rows import die_rows
from app.services.reporting.scope import WhenSeveral, default_model, find_model, rank
from hardware.driver import DieAddress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProvenanceOut:
    """The tester that measured: driver and version, the tester's identity, the station's test site,
    its resource, the SHA-256 of the site's driver options, the station host."""

    driver: str
    driver_version: str
    vendor: str
    model: str
    serial: str
    site: int
    resource: str | None
    options_sha256: str
    host: str


def _provenance(rows: dict[int, Provenance], provenance_id: int | None) -> ProvenanceOut | None:
    p = None if provenance_id is None else rows.get(provenance_id)
    if p is None:
        return None
    return ProvenanceOut(
        p.driver, p.driver_version, p.vendor, p.model, p.serial, p.site, p.resource, p.options_sha256, p.host
    )


@dataclass(frozen=True)
class SignatureOut:
    """``retries``: driver calls repeated after a timeout or a lost contact while measuring it."""

    version: int
    is_current: bool
    sha256: str
    reads: int
    tester_s: float
    n_dead_cols: int
    n_stuck_cells: int
    offset_spread_mac: float
    created_at: datetime
    retries: int = 0
    provenance: ProvenanceOut | None = None


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
    provenance: ProvenanceOut | None = None


@dataclass(frozen=True)
class FunctionalTestOut:
    """One test record of the die. ``accuracy_pct`` / ``test_time_s`` ``None``: nothing was measured (a
    tester alarm, soft bin 0, whose ``passed`` is ``None``: retest, no verdict; or a die fault), with
    ``alarm_code``, ``step`` and ``reason`` saying what happened."""

    model: str
    model_version: str
    calibrated: bool
    accuracy_pct: float | None
    hard_bin: int
    soft_bin: int
    passed: bool | None
    color: str
    test_time_s: float | None
    created_at: datetime
    retries: int = 0
    provenance: ProvenanceOut | None = None
    reason: str | None = None
    alarm_code: str | None = None
    step: str | None = None


@dataclass(frozen=True)
class DieReport:
    """A die; ``final`` is its result with ``model``. ``models`` are the models it was tested with (the
    lot's most-tested first); ``images`` and ``tests`` cover every model."""

    ecid: str
    lot_id: str
    wafer: int
    x: int
    y: int
    created_at: datetime
    model: str | None
    models: list[str]
    final: DieRow
    final_color: str
    signature: SignatureOut | None
    signature_history: list[SignatureOut]
    signature_detail: SignatureDetail | None
    images: list[ImageOut]
    tests: list[FunctionalTestOut]


def die_report(session: Session, ecid: str, *, model: str | None = None) -> DieReport:
    """The die with ``model``; by default the model it was tested with that the lot tested most (the
    lot's most-tested model when the die has no test)."""
    try:
        address = DieAddress.from_ecid(ecid)
    except ValueError as e:
        raise InvalidInputError(str(e), code="invalid_ecid") from e
    die = dies_repo.get_by_ecid(session, ecid)
    if die is None:
        raise NotFoundError(f"no die {ecid!r}")
    chosen = find_model(session, model) if model is not None else None
    tested = repo.tests_for_die(session, die.id)
    on_die = {m.id for _, m in tested}
    ranked = rank(repo.model_counts(session, [address.lot_id], pass_bins=PASS_BINS, alarm_bin=ALARM_BIN))
    mine = [c for c in ranked if c.model_id in on_die]
    if chosen is None:
        chosen = default_model(address.lot_id, mine or ranked, WhenSeveral.most_tested)
    current = signatures_repo.current(session, die.id)
    signatures = signatures_repo.history(session, die.id)
    image_rows = repo.images_for_die(session, die.id)
    testers = provenance_repo.by_ids(
        session,
        [s.provenance_id for s in signatures]
        + [t.provenance_id for t, _ in tested]
        + [i.provenance_id for i, *_ in image_rows],
    )
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
            s.retries,
            _provenance(testers, s.provenance_id),
        )
        for s in signatures
    ]
    (row,) = die_rows(session, address.lot_id, chosen, address.wafer, die_id=die.id)
    tests = [
        FunctionalTestOut(
            model=m.name,
            model_version=m.version,
            calibrated=t.image_id is not None,
            accuracy_pct=None if t.accuracy is None else 100.0 * t.accuracy,
            hard_bin=t.hard_bin,
            soft_bin=t.soft_bin,
            passed=None if t.soft_bin == ALARM_BIN else is_pass(t.soft_bin),
            color=soft_bin_color(t.soft_bin),
            test_time_s=t.test_time_s,
            created_at=t.created_at,
            retries=t.retries,
            provenance=_provenance(testers, t.provenance_id),
            reason=t.reason,
            alarm_code=t.alarm_code,
            step=t.step,
        )
        for t, m in tested
    ]
    images = [
        ImageOut(
            name,
            version,
            sig_version,
            i.content_sha256,
            i.size_bytes,
            i.created_at,
            _provenance(testers, i.provenance_id),
        )
        for i, name, version, sig_version in image_rows
    ]
    return DieReport(
        ecid=die.ecid,
        lot_id=die.wafer.lot_id,
        wafer=die.wafer.number,
        x=die.x,
        y=die.y,
        created_at=die.created_at,
        model=None if chosen is None else chosen.ref,
        models=[f"{c.name}@{c.version}" for c in mine],
        final=row,
        final_color=soft_bin_color(row.soft_bin),
        signature=next((s for s in history if s.is_current), None),
        signature_history=history,
        signature_detail=None if current is None else decode_signature(current.blob),
        images=images,
        tests=tests,
    )

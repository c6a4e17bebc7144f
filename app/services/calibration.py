"""Per-die use cases: characterize, compensate, functional test. Hardware, calibration and the
database meet here and nowhere else.

Each use case keeps database transactions short and never holds one across tester I/O: read what
is needed, release the session, drive the tester, then write the result in one transaction (a die
never gets a half-written signature, image or test result). All of them are safe to repeat: with
``force=False`` a step whose result is already stored returns it without tester time, which is what
makes a redelivered batch chunk change nothing.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.calibration.pipeline import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BUDGET,
    ModelContext,
    SignatureFormatError,
    characterize,
    compensate,
    functional_test,
    grade,
)
from app.calibration.pipeline import (
    Signature as DieSignature,
)
from app.config import Settings
from app.db.repositories import audit, dies, images, models, signatures, test_results
from app.db.session import session_scope
from app.db.tables import Die, Image, Model, TestResult
from app.db.tables import Signature as SignatureRow
from app.errors import AppError, ConflictError, InvalidInputError, NotFoundError
from app.services import provenance as provenance_service
from app.services import results
from app.services.alarms import AlarmRecordedError, JobAttempt, on_site
from app.services.hardware import DriverPool, TesterProvenance
from app.services.images import ImageStore
from app.services.models import grade_rules
from app.services.runtime import ModelRuntimes, runtime_for
from app.services.signatures import record_signature
from hardware.chip import ImageHeader, build_image, encode_image
from hardware.driver import TRANSIENT_ERRORS, DieAddress, Driver, ProtocolError

log = logging.getLogger(__name__)


class NoSignatureError(AppError):
    status_code = 409
    code = "not_characterized"


@dataclass(frozen=True)
class CharacterizeOutcome:
    ecid: str
    signature_id: int
    signature_sha256: str
    version: int
    reads: int
    read_vectors: int
    writes: int
    tester_s: float
    n_dead_cols: int
    n_stuck_cells: int
    offset_spread_mac: float
    signature_bytes: int
    created: bool
    summary: dict[str, float | int] = field(default_factory=dict)
    retries: int = 0
    provenance: TesterProvenance | None = None


@dataclass(frozen=True)
class ImageOutcome:
    ecid: str
    model: str
    image_id: int
    content_sha256: str
    signature_sha256: str
    algorithm_version: str
    predicted_agreement: float | None
    compute_s: float
    size_bytes: int
    calibratable: bool
    reason: str | None
    created: bool


@dataclass(frozen=True)
class TestOutcome:
    __test__ = False  # not a pytest class

    ecid: str
    model: str
    result_id: int
    accuracy: float
    accuracy_uncalibrated: float | None
    hard_bin: int
    soft_bin: int
    bin_label: str
    test_time_s: float
    n_clips: int
    image_sha256: str | None
    created: bool
    retries: int = 0
    provenance: TesterProvenance | None = None


# ------------------------------------------------------------------------------------------ helpers
Db = Session | sessionmaker[Session]
"""A request's session (every phase joins its transaction) or a factory (one short transaction per
phase, so batch workers never hold the database across tester I/O)."""


def _scope(db: Db, *, read_only: bool = False) -> AbstractContextManager[Session]:
    return nullcontext(db) if isinstance(db, Session) else session_scope(db, read_only=read_only)


def parse_model_ref(ref: str) -> tuple[str, str]:
    name, sep, version = ref.partition("@")
    if not sep or not name or not version:
        raise InvalidInputError(f"model reference {ref!r}: expected name@version", code="invalid_model_ref")
    return name, version


def _die(session: Session, ecid: str) -> Die:
    try:
        DieAddress.from_ecid(ecid)
    except ValueError as e:
        raise InvalidInputError(str(e), code="invalid_ecid") from e
    die = dies.get_by_ecid(session, ecid)
    if die is None:
        raise NotFoundError(f"no die {ecid!r}; register its lot first")
    return die


def _model(session: Session, ref: str, *, with_blob: bool = False) -> Model:
    name, version = parse_model_ref(ref)
    model = models.get(session, name, version, with_blob=with_blob)
    if model is None:
        raise NotFoundError(f"no model {ref!r}", code="model_not_found")
    return model


def _characterize_outcome(
    ecid: str,
    sig: SignatureRow,
    created: bool,
    summary: dict[str, Any],
    provenance: TesterProvenance | None = None,
) -> CharacterizeOutcome:
    return CharacterizeOutcome(
        ecid=ecid,
        signature_id=sig.id,
        signature_sha256=sig.sha256,
        version=sig.version,
        reads=sig.reads,
        read_vectors=int(summary.get("read_vectors", 0)),
        writes=int(summary.get("writes", 0)),
        tester_s=sig.tester_s,
        n_dead_cols=sig.n_dead_cols,
        n_stuck_cells=sig.n_stuck_cells,
        offset_spread_mac=sig.offset_spread_mac,
        signature_bytes=len(sig.blob),
        created=created,
        summary=summary,
        retries=sig.retries,
        provenance=provenance,
    )


def _probe(driver: Driver, ecid: str, *, attempts: int = DEFAULT_ATTEMPTS) -> int:
    """Step to the die and make contact, trying again after a transient error (``attempts`` tries);
    returns the number of retries."""
    address = DieAddress.from_ecid(ecid)
    for attempt in range(1, attempts + 1):
        try:
            ident = driver.probe(address)
        except TRANSIENT_ERRORS:
            if attempt == attempts:
                raise
            continue
        if ident.ecid != ecid:
            raise ProtocolError(f"prober reached {ident.ecid}, expected {ecid}", protocol_code=0x11)
        return attempt - 1
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------- characterize
def characterize_die(
    db: Db,
    pool: DriverPool,
    ecid: str,
    *,
    force: bool = True,
    budget: int | None = None,
    actor: str = "system",
) -> CharacterizeOutcome:
    """Measure the die's signature and make it current (``force=False``: reuse a current one)."""
    with _scope(db) as s:
        die = _die(s, ecid)
        die_id = die.id
        current = signatures.current(s, die_id)
        if current is not None and not force:
            prov = None if current.provenance is None else provenance_service.from_row(current.provenance)
            return _characterize_outcome(ecid, current, False, {}, prov)
    with on_site(pool) as site:
        prov = site.provenance()
        probe_retries = _probe(site.driver, ecid)
        # The production test patterns: the same for every die, precomputed once per budget.
        result = characterize(site.driver, budget=budget or DEFAULT_BUDGET)
    blob = result.signature.to_bytes()
    summary = result.summary()
    with _scope(db) as s:
        sig = record_signature(
            s,
            die_id=die_id,
            blob=blob,
            reads=result.reads,
            tester_s=result.tester_s,
            n_dead_cols=result.signature.n_dead_cols,
            n_stuck_cells=result.signature.n_stuck_cells,
            offset_spread_mac=float(summary.get("offset_spread_mac", 0.0)),
            actor=actor,
            retries=probe_retries + result.retries,
            provenance=prov,
        )
    return _characterize_outcome(ecid, sig, True, summary, prov)


# ------------------------------------------------------------------------------------- compensate
def _image_outcome(ecid: str, ref: str, row: Image, created: bool) -> ImageOutcome:
    return ImageOutcome(
        ecid=ecid,
        model=ref,
        image_id=row.id,
        content_sha256=row.content_sha256,
        signature_sha256=row.signature_sha256,
        algorithm_version=row.algorithm_version,
        predicted_agreement=row.predicted_agreement,
        compute_s=row.compute_s,
        size_bytes=row.size_bytes,
        calibratable=row.calibratable,
        reason=row.reason,
        created=created,
    )


def compensate_die(
    db: Db,
    runtimes: ModelRuntimes,
    store: ImageStore,
    ecid: str,
    model_ref: str,
    *,
    actor: str = "system",
    write_db: Db | None = None,
) -> ImageOutcome:
    """The die's weight image for a model, computed from its current signature on first request.

    ``write_db`` (default ``db``) stores a newly computed image: a GET request reads through its own
    read-only session and writes, once per image, through a short unit of work of its own.
    """
    writer = db if write_db is None else write_db
    name, version = parse_model_ref(model_ref)
    with _scope(db, read_only=True) as s:
        # The cached path (every request after the first): one query, no blob, no write lock.
        hit = images.current_for(s, ecid, name, version)
        if hit is not None and store.exists(hit.content_sha256):
            return _image_outcome(ecid, model_ref, hit, False)
        die = _die(s, ecid)
        model = _model(s, model_ref)
        sig = signatures.current(s, die.id, with_blob=False)
        if sig is None:
            raise NoSignatureError(f"die {ecid} has no signature; characterize it first")
        existing = images.get(s, die.id, model.id, sig.id)
        if existing is not None and store.exists(existing.content_sha256):
            return _image_outcome(ecid, model_ref, existing, False)
        die_id, model_id, sig_id, sig_sha, sig_blob = die.id, model.id, sig.id, sig.sha256, sig.blob
        sig_provenance_id = sig.provenance_id
        runtime = runtime_for(s, runtimes, model)
    try:
        signature = DieSignature.from_bytes(sig_blob)
    except SignatureFormatError as e:
        raise ConflictError(f"stored signature of {ecid} is unreadable: {e}", code="signature_corrupt") from e
    out = compensate(ModelContext(runtime.program, runtime.stats), signature, ecid, sig_sha)
    data = out.image_bytes
    content = store.put(data)
    row = Image(
        die_id=die_id,
        model_id=model_id,
        signature_id=sig_id,
        ecid=ecid,
        signature_sha256=sig_sha,
        content_sha256=content,
        size_bytes=len(data),
        algorithm_version=out.algorithm_version,
        predicted_agreement=out.predicted_agreement,
        compute_s=out.compute_s,
        calibratable=out.calibratable,
        reason=out.reason or None,
        provenance_id=sig_provenance_id,
    )
    try:
        with _scope(writer) as s, s.begin_nested():
            images.add(s, row)
            audit.add(
                s,
                actor=actor,
                action="image.compute",
                target=ecid,
                details={"model": model_ref, "sha256": content},
            )
    except IntegrityError:
        # A concurrent request stored the same (die, model, signature) first: serve that row.
        with _scope(writer) as s:
            winner = images.get(s, die_id, model_id, sig_id)
            assert winner is not None
            return _image_outcome(ecid, model_ref, winner, False)
    return _image_outcome(ecid, model_ref, row, True)


def image_bytes(store: ImageStore, outcome: ImageOutcome) -> bytes:
    data = store.get(outcome.content_sha256)
    if data is None:
        raise NotFoundError(f"image {outcome.content_sha256} is missing from the store", code="image_missing")
    return data


# -------------------------------------------------------------------------------- functional test
def _test_outcome(
    ecid: str,
    ref: str,
    row: TestResult,
    before: float | None,
    label: str,
    n: int,
    sha: str | None,
    created: bool,
    provenance: TesterProvenance | None = None,
) -> TestOutcome:
    assert row.accuracy is not None and row.test_time_s is not None, "a measured result"
    return TestOutcome(
        ecid=ecid,
        model=ref,
        result_id=row.id,
        accuracy=row.accuracy,
        accuracy_uncalibrated=before,
        hard_bin=row.hard_bin,
        soft_bin=row.soft_bin,
        bin_label=label,
        test_time_s=row.test_time_s,
        n_clips=n,
        image_sha256=sha,
        created=created,
        retries=row.retries,
        provenance=provenance,
    )


def functional_test_die(
    db: Db,
    pool: DriverPool,
    runtimes: ModelRuntimes,
    store: ImageStore,
    settings: Settings,
    ecid: str,
    model_ref: str,
    *,
    force: bool = True,
    actor: str = "system",
    job: JobAttempt | None = None,
) -> TestOutcome:
    """Program the die's image, run the model's functional-test samples through it, store accuracy
    and bins (graded against the model's own pass limits).

    With ``settings.measure_uncalibrated`` the uncompensated network is measured too (a second
    test_result row without an image: the accuracy *before* calibration). ``job``: the batch job item
    and attempt the calibrated result is recorded under (one record per pair; an alarm already
    recorded for it is :class:`AlarmRecordedError`, and no result is written next to it).
    """
    image = compensate_die(db, runtimes, store, ecid, model_ref, actor=actor)
    with _scope(db, read_only=True) as s:
        die = _die(s, ecid)
        model = _model(s, model_ref)
        if not force:
            done = test_results.latest(s, die.id, model.id, image_id=image.image_id)
            if done is not None:
                earlier = test_results.latest(s, die.id, model.id, image_id=None)
                assert done.accuracy is not None
                _, _, label = grade(
                    done.accuracy, calibratable=image.calibratable, pass_grades=grade_rules(model)
                )
                return _test_outcome(
                    ecid,
                    model_ref,
                    done,
                    earlier.accuracy if earlier else None,
                    label,
                    0,
                    image.content_sha256,
                    False,
                    None if done.provenance is None else provenance_service.from_row(done.provenance),
                )
        die_id, model_id = die.id, model.id
        runtime = runtime_for(s, runtimes, model)
    data = image_bytes(store, image)
    x, y, grades = runtime.test_features, runtime.test_labels, runtime.grades
    t0 = time.perf_counter()
    with on_site(pool) as site:
        prov = site.provenance()
        driver = site.driver
        probe_retries = _probe(driver, ecid)
        before = None
        if settings.measure_uncalibrated:
            ideal = build_image(
                runtime.program,
                driver.geometry(),
                ImageHeader(ecid, runtime.name, runtime.version, "", "uncalibrated"),
            )
            before = functional_test(driver, encode_image(ideal), x, y)
        after = functional_test(driver, data, x, y)
    hard, soft, label = grade(after.accuracy, calibratable=image.calibratable, pass_grades=grades)
    try:
        with _scope(db) as s, s.begin_nested():
            if job is not None:
                results.ensure_not_recorded(s, job)
            row = results.store_measured(
                s,
                die_id,
                model_id,
                image.image_id,
                before,
                after,
                (hard, soft),
                grades,
                prov,
                job,
                probe_retries,
            )
            audit.add(
                s,
                actor=actor,
                action="functional_test",
                target=ecid,
                details={
                    "model": model_ref,
                    "accuracy": after.accuracy,
                    "soft_bin": soft,
                    "site": prov.site,
                    "retries": after.retries,
                },
            )
    except IntegrityError as e:
        if job is None:
            raise
        raise AlarmRecordedError(
            f"job item {job.item_id} attempt {job.attempt} already has a record; this result is not stored"
        ) from e
    log.info(
        "functional test %s %s: %.3f (bin %d) in %.2f s",
        ecid,
        model_ref,
        after.accuracy,
        soft,
        time.perf_counter() - t0,
    )
    return _test_outcome(
        ecid,
        model_ref,
        row,
        before.accuracy if before else None,
        label,
        len(y),
        image.content_sha256,
        True,
        prov,
    )

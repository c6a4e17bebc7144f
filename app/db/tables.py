"""The tables. One class per table, typed with ``Mapped[...]``; no behaviour beyond relationships.

Key columns at a glance:

* ``Lot.lot_id`` (natural primary key) -> ``Wafer`` (``lot_id``, ``number``) holds the die map
  -> ``Die`` (``wafer_id``, ``x``, ``y``), unique ``ecid``.
* ``Signature``: history per die (``die_id``, ``version``); at most one row per die has
  ``is_current`` (partial unique index ``uq_signature_current_die``).
* ``Dataset`` (``name``, ``version``) unique, bytes in ``DatasetBlob`` by content hash.
* ``Model`` (``name``, ``version``) unique, with its calibration and test datasets; ``Image`` unique per (``die_id``, ``model_id``,
  ``signature_id``) and points at a file named by ``content_sha256`` in the image store.
* ``TestResult``, ``Job`` / ``JobItem``, ``ApiKey`` (``prefix`` unique), ``AuditEvent``,
  ``IdempotencyRecord`` (``owner``, ``key``) unique.
* ``Provenance``: which driver, tester, site and options measured; one row per distinct combination
  (``key_sha256`` unique), referenced by ``Signature``, ``Image`` and ``TestResult.provenance_id``
  (NULL for rows stored before provenance was recorded).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db.base import Base, utcnow


class Role(StrEnum):
    """API key roles. ``admin`` may do everything; ``viewer`` only reads."""

    viewer = "viewer"
    station = "station"
    engineer = "engineer"
    admin = "admin"


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


def _in(column: str, enum: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(m.value) for m in enum)})"


class Lot(Base):
    __tablename__ = "lot"

    lot_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    product: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    wafers: Mapped[list[Wafer]] = relationship(
        back_populates="lot", order_by="Wafer.number", cascade="all, delete-orphan", lazy="selectin"
    )


class Wafer(Base):
    """A wafer and its die map: the (x, y) sites that carry a die."""

    __tablename__ = "wafer"
    __table_args__ = (
        UniqueConstraint("lot_id", "number"),
        CheckConstraint("number BETWEEN 1 AND 99", name="number_range"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    lot_id: Mapped[str] = mapped_column(ForeignKey("lot.lot_id", ondelete="CASCADE"))
    number: Mapped[int]
    # [[x, y], ...] sorted by (y, x); the shape descriptor it was made from, if any.
    die_map: Mapped[list[Any]] = mapped_column(deferred=True)  # large: loaded only where asked for
    shape: Mapped[dict[str, Any] | None]
    n_sites: Mapped[int]

    lot: Mapped[Lot] = relationship(back_populates="wafers")


class Die(Base):
    __tablename__ = "die"
    __table_args__ = (UniqueConstraint("wafer_id", "x", "y"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    wafer_id: Mapped[int] = mapped_column(ForeignKey("wafer.id", ondelete="CASCADE"))
    x: Mapped[int]
    y: Mapped[int]
    ecid: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    wafer: Mapped[Wafer] = relationship(lazy="joined", innerjoin=True)


class Provenance(Base):
    """What measured: driver name and version, the tester's identity as ``Driver.info()`` reports it
    (vendor, model, serial, ``info``: its other fields), the station's test site and its resource, the
    SHA-256 of the site's canonical driver options (the options themselves, secrets included, are
    never stored) and the host the station ran on. ``key_sha256`` hashes all of them."""

    __tablename__ = "provenance"

    id: Mapped[int] = mapped_column(primary_key=True)
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    driver: Mapped[str] = mapped_column(String(64))
    driver_version: Mapped[str] = mapped_column(String(64))
    vendor: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(128))
    serial: Mapped[str] = mapped_column(String(128))
    site: Mapped[int]
    resource: Mapped[str | None] = mapped_column(String(255))
    options_sha256: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(255))
    info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Signature(Base):
    """One characterization of a die. The blob is the estimator's serialized signature; ``retries``
    counts the driver calls repeated after a transient error while measuring it."""

    __tablename__ = "signature"
    __table_args__ = (
        UniqueConstraint("die_id", "version"),
        # The schema itself forbids two current signatures for one die, whatever the service does.
        Index(
            "uq_signature_current_die",
            "die_id",
            unique=True,
            sqlite_where=text("is_current"),
            postgresql_where=text("is_current"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    die_id: Mapped[int] = mapped_column(ForeignKey("die.id", ondelete="CASCADE"))
    version: Mapped[int]
    is_current: Mapped[bool]
    blob: Mapped[bytes]
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    reads: Mapped[int]
    tester_s: Mapped[float]
    n_dead_cols: Mapped[int]
    n_stuck_cells: Mapped[int]
    offset_spread_mac: Mapped[float]
    retries: Mapped[int] = mapped_column(default=0, server_default="0")
    provenance_id: Mapped[int | None] = mapped_column(ForeignKey("provenance.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    provenance: Mapped[Provenance | None] = relationship()


class DatasetBlob(Base):
    """The bytes of a dataset file, stored once per content hash (``app.nn.dataset`` format)."""

    __tablename__ = "dataset_blob"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes]
    size_bytes: Mapped[int]


class Dataset(Base):
    """A named, versioned dataset (calibration or functional-test inputs with labels)."""

    __tablename__ = "dataset"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64), ForeignKey("dataset_blob.sha256"))
    size_bytes: Mapped[int]
    n_samples: Mapped[int]
    input_shape: Mapped[list[Any]]
    class_names: Mapped[list[Any]]
    # "raw" or "log_mel": the front end that made x (the feature spec is in the file's manifest).
    features: Mapped[str] = mapped_column(String(16))
    provenance: Mapped[dict[str, Any]]
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Model(Base):
    """An uploaded network (the bytes ``app.nn.model.load_model_bytes`` accepts).

    Rows stored before model format 2 have no datasets, ideal accuracy nor grade table: they use
    the station's KWS datasets and the default grades.
    """

    __tablename__ = "model"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32))
    blob: Mapped[bytes]
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int]
    class_names: Mapped[list[Any]]
    software_accuracy: Mapped[float | None]
    format_version: Mapped[int] = mapped_column(default=1, server_default="1")
    input_shape: Mapped[list[Any] | None]
    preprocessing: Mapped[str | None] = mapped_column(String(16))
    calibration_dataset_id: Mapped[int | None] = mapped_column(ForeignKey("dataset.id"))
    test_dataset_id: Mapped[int | None] = mapped_column(ForeignKey("dataset.id"))
    # Accuracy of the ideal (variation-free) chip on the test dataset, measured at upload.
    ideal_accuracy: Mapped[float | None]
    # The pass limits as declared ({"mode", "grades"}) and resolved to absolute accuracies.
    pass_limits: Mapped[dict[str, Any] | None]
    grade_table: Mapped[list[Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    calibration_dataset: Mapped[Dataset | None] = relationship(
        foreign_keys=[calibration_dataset_id], lazy="joined"
    )
    test_dataset: Mapped[Dataset | None] = relationship(foreign_keys=[test_dataset_id], lazy="joined")


class Image(Base):
    """A die-specific weight image: (die, model, signature) -> file ``content_sha256`` in the store.
    ``provenance_id`` is the signature's: the tester whose measurement the image compensates."""

    __tablename__ = "image"
    __table_args__ = (UniqueConstraint("die_id", "model_id", "signature_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    die_id: Mapped[int] = mapped_column(ForeignKey("die.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id"))
    signature_id: Mapped[int] = mapped_column(ForeignKey("signature.id"))
    ecid: Mapped[str] = mapped_column(String(64), index=True)
    signature_sha256: Mapped[str] = mapped_column(String(64))
    content_sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int]
    # Provenance: the compensation algorithm and what it predicted for this die.
    algorithm_version: Mapped[str] = mapped_column(String(32), default="")
    predicted_agreement: Mapped[float | None]
    compute_s: Mapped[float] = mapped_column(default=0.0)
    # False when the die's defects exceed what the spares repair (soft bin 11), with the reason.
    calibratable: Mapped[bool] = mapped_column(default=True)
    reason: Mapped[str | None] = mapped_column(Text)
    provenance_id: Mapped[int | None] = mapped_column(ForeignKey("provenance.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    provenance: Mapped[Provenance | None] = relationship()


class TestResult(Base):
    """One record of a die's functional test with one model: what happened, never an invented value.

    * measured: ``accuracy`` and ``test_time_s`` are the measurement; ``image_id`` NULL ran the
      uncompensated network (accuracy *before* calibration), else the die's weight image (*after*);
    * not measured (``accuracy`` and ``test_time_s`` NULL, ``reason`` and ``alarm_code`` say why):
      a tester alarm (soft bin 0: "retest", not a die verdict) or a die fault (its failing bin);
      ``step`` names the job step that could not complete.

    ``provenance_id``: the tester and site that ran it (NULL when not known); ``retries``: driver calls
    repeated after a transient error. A row written by a batch job names its job item and the item's
    attempt (``job_item_id``, ``attempt``): one record per (job item, attempt), whatever crashes
    and redeliveries happen (``uq_test_result_job_item_id_attempt``)."""

    __tablename__ = "test_result"
    __test__ = False  # not a pytest class
    __table_args__ = (UniqueConstraint("job_item_id", "attempt"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    die_id: Mapped[int] = mapped_column(ForeignKey("die.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id"))
    image_id: Mapped[int | None] = mapped_column(ForeignKey("image.id"))
    accuracy: Mapped[float | None]
    hard_bin: Mapped[int]
    soft_bin: Mapped[int]
    test_time_s: Mapped[float | None]
    # Why a die got an alarm or failing bin without a measurement (None for a measured result).
    reason: Mapped[str | None] = mapped_column(Text)
    # The error code of an alarm or die fault (e.g. "hardware_timeout", "die_fault") and its step.
    alarm_code: Mapped[str | None] = mapped_column(String(64))
    step: Mapped[str | None] = mapped_column(String(32))
    retries: Mapped[int] = mapped_column(default=0, server_default="0")
    provenance_id: Mapped[int | None] = mapped_column(ForeignKey("provenance.id"))
    job_item_id: Mapped[int | None] = mapped_column(ForeignKey("job_item.id", ondelete="SET NULL"))
    attempt: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    provenance: Mapped[Provenance | None] = relationship()


class Job(Base):
    __tablename__ = "job"
    __table_args__ = (CheckConstraint(_in("state", JobState), name="state_valid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default=JobState.queued, index=True)
    lot_id: Mapped[str | None] = mapped_column(String(32), index=True)
    params: Mapped[dict[str, Any]]
    counters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class JobItem(Base):
    """One step of a batch job on one die (retried up to the job's limit).

    A worker claims an item by setting ``state='running'`` and ``claimed_by``; it refreshes
    ``heartbeat_at`` while it works, and a running item whose heartbeat is older than the lease may
    be claimed again (its worker died). See ``docs/jobs.md``.
    """

    __tablename__ = "job_item"
    __table_args__ = (
        UniqueConstraint("job_id", "die_id", "step"),
        CheckConstraint(_in("state", JobState), name="state_valid"),
        Index("ix_job_item_job_id_state", "job_id", "state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"))
    die_id: Mapped[int] = mapped_column(ForeignKey("die.id", ondelete="CASCADE"))
    step: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default=JobState.queued)
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(96))
    heartbeat_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class ApiKey(Base):
    """An API key: only its SHA-256 is stored; ``prefix`` (the key's first characters) finds the row."""

    __tablename__ = "api_key"
    __table_args__ = (CheckConstraint(_in("role", Role), name="role_valid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_sha256: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class AuditEvent(Base):
    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(primary_key=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class IdempotencyRecord(Base):
    """The first response to a POST carrying an ``Idempotency-Key``, replayed on retries."""

    __tablename__ = "idempotency_record"
    __table_args__ = (UniqueConstraint("owner", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    request_sha256: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int]
    response_body: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

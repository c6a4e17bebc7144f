"""Datasets as a resource: upload (validated by :func:`app.nn.dataset.load_dataset_bytes`), read
back, and the station's own sets (the KWS calibration and test clips from the generator, the
scikit-learn digits), registered at start-up like any upload."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.repositories import audit, datasets
from app.db.tables import Dataset as DatasetRow
from app.errors import ConflictError, InvalidInputError, NotFoundError, PayloadTooLargeError
from app.nn.dataset import Dataset, DatasetFormatError, dataset_bytes, load_dataset_bytes
from app.nn.features import DEFAULT_SPEC
from app.nn.network import DATASET_REF_RE, DatasetRefs

log = logging.getLogger(__name__)

KWS_GENERATOR_VERSION = "1"


def parse_dataset_ref(ref: str) -> tuple[str, str]:
    m = DATASET_REF_RE.fullmatch(ref)
    if m is None:
        raise InvalidInputError(
            f"dataset reference {ref!r}: expected name@version", code="invalid_dataset_ref"
        )
    return m.group(1), m.group(2)


def inspect_dataset(data: bytes) -> Dataset:
    """Parse and validate an uploaded dataset file; 422 ``invalid_dataset`` when it does not."""
    try:
        return load_dataset_bytes(data)
    except DatasetFormatError as e:
        raise InvalidInputError(f"not a valid dataset file: {e}", code="invalid_dataset") from e


def upload_dataset(session: Session, *, data: bytes, max_bytes: int, actor: str) -> DatasetRow:
    """Store a dataset under the name and version of its manifest; 409 when they are taken."""
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"dataset file of {len(data)} bytes; the limit is {max_bytes}")
    ds = inspect_dataset(data)
    if datasets.get(session, ds.name, ds.version) is not None:
        raise ConflictError(f"dataset {ds.ref} exists; upload a new version", code="dataset_exists")
    digest = hashlib.sha256(data).hexdigest()
    row = DatasetRow(
        name=ds.name,
        version=ds.version,
        role=ds.role,
        sha256=digest,
        size_bytes=len(data),
        n_samples=int(ds.x.shape[0]),
        input_shape=list(ds.input_shape),
        class_names=list(ds.class_names),
        features="raw" if ds.feature_spec is None else "log_mel",
        provenance=dict(ds.provenance),
        created_by=actor,
    )
    try:
        datasets.add(session, row, data)
    except IntegrityError as e:  # uploaded concurrently
        raise ConflictError(f"dataset {ds.ref} exists; upload a new version", code="dataset_exists") from e
    audit.add(session, actor=actor, action="dataset.upload", target=ds.ref, details={"sha256": digest})
    return row


def get_dataset(session: Session, name: str, version: str) -> DatasetRow:
    row = datasets.get(session, name, version)
    if row is None:
        raise NotFoundError(f"no dataset {name}@{version}", code="dataset_not_found")
    return row


def get_dataset_ref(session: Session, ref: str) -> DatasetRow:
    return get_dataset(session, *parse_dataset_ref(ref))


def list_datasets(
    session: Session, *, name: str | None, role: str | None, limit: int, offset: int
) -> tuple[list[DatasetRow], int]:
    return datasets.search(session, name=name, role=role, limit=limit, offset=offset)


def load_dataset(session: Session, row: DatasetRow) -> Dataset:
    """The arrays of a stored dataset (parsed and validated again: the database is not trusted)."""
    data = datasets.blob(session, row.sha256)
    if data is None:
        raise NotFoundError(f"dataset {row.name}@{row.version} has no stored content", code="dataset_missing")
    try:
        return load_dataset_bytes(data)
    except DatasetFormatError as e:
        raise InvalidInputError(
            f"stored dataset {row.name}@{row.version} is unreadable: {e}", code="invalid_dataset"
        ) from e


# ----------------------------------------------------------------------------- the station's sets
def kws_dataset_refs(settings: Settings) -> DatasetRefs:
    """The generated KWS sets at this station's size (``eval_clips_per_class`` clips per class)."""
    version = f"{KWS_GENERATOR_VERSION}-n{settings.eval_clips_per_class}"
    return DatasetRefs(calibration=f"kws-calib@{version}", test=f"kws-test@{version}")


def generate_kws_datasets(settings: Settings) -> tuple[Dataset, Dataset]:
    """(calibration, test): the generated KWS sets at this station's size (cached on disk)."""
    cal, test = _kws_datasets(settings)
    return cal, test


def _kws_datasets(settings: Settings) -> list[Dataset]:
    from app.nn.kws_data import load_kws

    n = settings.eval_clips_per_class
    per = {"train": 1, "val": n, "test": n}
    kws_dir = settings.cache_dir / "kws"
    refs = kws_dataset_refs(settings)
    out = []
    for ref, split, role in ((refs.calibration, "val", "calibration"), (refs.test, "test", "test")):
        x, y, names = load_kws(split, kws_dir, clips_per_class=per, progress=False)
        name, version = parse_dataset_ref(ref)
        provenance = {
            "source": "app.nn.kws_data (eSpeak NG synthetic speech)",
            "split": split,
            "seed": 0,
            "clips_per_class": n,
            "speakers": "validation" if split == "val" else "held-out test",
        }
        out.append(
            Dataset(
                name,
                version,
                role,
                tuple(names),
                np.asarray(x, np.float32),
                y.astype(np.int64),
                provenance,
                DEFAULT_SPEC,
            )
        )
    return out


def _digits_datasets(settings: Settings) -> list[Dataset]:
    from app.nn.digits import digits_datasets

    return list(digits_datasets().values())


def _digits_refs(settings: Settings) -> list[str]:
    from app.nn.digits import SPLIT_NAMES

    return list(SPLIT_NAMES.values())


# source -> (the refs it registers, cheap to compute; the datasets, generated only when missing)
BUILTIN_SOURCES: dict[str, tuple[Callable[[Settings], list[str]], Callable[[Settings], list[Dataset]]]] = {
    "kws": (lambda s: list(kws_dataset_refs(s).as_dict().values()), _kws_datasets),
    "digits": (_digits_refs, _digits_datasets),
}


def ensure_builtin_datasets(
    session: Session,
    settings: Settings,
    *,
    sources: tuple[str, ...] = ("kws", "digits"),
    actor: str = "startup",
) -> list[DatasetRow]:
    """Register the station's generated datasets that are not stored yet (idempotent; nothing is
    generated when they all are)."""
    rows = []
    for source in sources:
        refs, generate = BUILTIN_SOURCES[source]
        stored = [datasets.get(session, *parse_dataset_ref(ref)) for ref in refs(settings)]
        if all(row is not None for row in stored):
            rows += [row for row in stored if row is not None]
            continue
        for ds in generate(settings):
            existing = datasets.get(session, ds.name, ds.version)
            if existing is not None:
                rows.append(existing)
                continue
            data = dataset_bytes(ds)
            rows.append(upload_dataset(session, data=data, max_bytes=len(data), actor=actor))
            log.info("registered dataset %s (%d samples)", ds.ref, ds.x.shape[0])
    return rows

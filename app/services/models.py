"""Uploading networks (validated by :func:`app.nn.model.load_model_bytes`), binding them to their
calibration and functional-test datasets, resolving their pass limits, and reading them back.

At upload a model is checked against its datasets: the same input shape, the same front end, and
the same set of class names (labels are mapped by name, so a model may order its classes as it
likes). Its ideal-chip accuracy on the functional-test samples is measured once, which is what
relative pass limits are relative to.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.calibration.functional import DEFAULT_PASS_GRADES, GradeRule
from app.config import Settings
from app.db.repositories import audit, models
from app.db.tables import Dataset as DatasetRow
from app.db.tables import Model
from app.errors import ConflictError, InvalidInputError, NotFoundError, PayloadTooLargeError
from app.nn.dataset import Dataset
from app.nn.model import (
    BinaryNetwork,
    DatasetRefs,
    ModelFormatError,
    ideal_chip_agreement,
    load_model_bytes,
    model_bytes,
    parse_pass_limits,
    parse_preprocessing,
    read_model_bytes,
    reference_model_path,
    to_program,
)
from app.services import datasets as dataset_service
from hardware.chip import ChipError, ChipGeometry, map_network

log = logging.getLogger(__name__)

# The metric app.nn.train writes into a model's manifest.
SOFTWARE_ACCURACY_METRIC = "software_test_accuracy"


def parse_network(data: bytes) -> tuple[BinaryNetwork, int]:
    """Parse and validate a model file and check it fits the chip; the upload path's one parser.
    Returns the network and the file's format version."""
    try:
        network, format_version = read_model_bytes(data)
    except ModelFormatError as e:
        raise InvalidInputError(f"not a valid model file: {e}", code="invalid_model") from e
    try:
        map_network(to_program(network), ChipGeometry())
    except ChipError as e:
        raise InvalidInputError(f"model does not fit the chip: {e}", code="model_does_not_fit") from e
    return network, format_version


def model_from_onnx(
    data: bytes,
    *,
    name: str,
    version: str,
    class_names: list[str],
    preprocessing: dict[str, Any] | None,
    pass_limits: dict[str, Any] | None,
) -> bytes:
    """The cimcal model file of an ONNX network (``torch.onnx.export`` of the supported layers);
    422 ``unsupported_operator`` naming the operator and node, ``invalid_model`` otherwise."""
    from app.nn.onnx_import import UnsupportedOperatorError, network_from_onnx

    try:
        net = network_from_onnx(
            data,
            name=name,
            version=version,
            class_names=class_names,
            preprocessing=None if preprocessing is None else parse_preprocessing(preprocessing),
            pass_limits=None if pass_limits is None else parse_pass_limits(pass_limits),
        )
        return model_bytes(net)
    except UnsupportedOperatorError as e:
        raise InvalidInputError(
            f"ONNX model not supported: {e}",
            code="unsupported_operator",
            details={"op_type": e.op_type, "node": e.node},
        ) from e
    except ModelFormatError as e:
        raise InvalidInputError(
            f"not a valid ONNX model of a binary network: {e}", code="invalid_model"
        ) from e


def evenly(n_total: int, n: int) -> NDArray[np.intp]:
    """``n`` indices spread evenly over ``n_total`` (deterministic, keeps a sorted class balance)."""
    n = min(n, n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(np.intp))


def label_map(model_classes: tuple[str, ...], ds: Dataset) -> NDArray[np.int64]:
    """Dataset label index -> model logit index, by class name (the sets are equal, checked at upload)."""
    position = {c: i for i, c in enumerate(model_classes)}
    return np.array([position[c] for c in ds.class_names], dtype=np.int64)


def test_samples(net: BinaryNetwork, ds: Dataset, n: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The functional-test samples: ``n`` spread evenly over the dataset, preprocessed, labels as
    indices of the model's classes."""
    pick = evenly(ds.x.shape[0], n)
    return net.prep.apply(ds.x[pick]), label_map(net.class_names, ds)[ds.y[pick]]


def check_dataset_fits(net: BinaryNetwork, row: DatasetRow, ds: Dataset, role: str) -> None:
    """422 unless ``ds`` feeds ``net``: input shape, front end and class names."""
    ref = f"{row.name}@{row.version}"
    if ds.input_shape != net.input_shape:
        raise InvalidInputError(
            f"{role} dataset {ref} has samples of shape {list(ds.input_shape)}; the model takes {list(net.input_shape)}",
            code="dataset_shape_mismatch",
            details={
                "dataset": ref,
                "dataset_shape": list(ds.input_shape),
                "model_shape": list(net.input_shape),
            },
        )
    want = net.prep.feature_spec if net.prep.kind == "log_mel" else None
    if ds.feature_spec != want:
        raise InvalidInputError(
            f"{role} dataset {ref} was made by another front end than the model's {net.prep.kind!r} preprocessing",
            code="dataset_features_mismatch",
            details={"dataset": ref, "preprocessing": net.prep.kind},
        )
    missing = sorted(set(ds.class_names) - set(net.class_names))
    extra = sorted(set(net.class_names) - set(ds.class_names))
    if missing or extra:
        raise InvalidInputError(
            f"the model's classes do not match {role} dataset {ref}: "
            f"dataset classes the model lacks {missing}, model classes the dataset lacks {extra}",
            code="class_mismatch",
            details={"dataset": ref, "missing_in_model": missing, "missing_in_dataset": extra},
        )


def _refs(net: BinaryNetwork, settings: Settings, calibration: str | None, test: str | None) -> DatasetRefs:
    default = net.datasets
    if default is None and net.prep.kind == "log_mel":
        default = dataset_service.kws_dataset_refs(settings)  # a format-1 (or v2 log-mel) KWS model
    cal = calibration or (default.calibration if default else None)
    tst = test or (default.test if default else None)
    if cal is None or tst is None:
        raise InvalidInputError(
            "the model names no calibration and test datasets: give them in the file or the upload",
            code="datasets_required",
        )
    return DatasetRefs(cal, tst)


def _resolve(session: Session, settings: Settings, ref: str) -> DatasetRow:
    try:
        return dataset_service.get_dataset_ref(session, ref)
    except NotFoundError:
        if ref in dataset_service.kws_dataset_refs(settings).as_dict().values():
            dataset_service.ensure_builtin_datasets(session, settings, sources=("kws",))
            return dataset_service.get_dataset_ref(session, ref)
        raise InvalidInputError(
            f"dataset {ref} is not registered: upload it first (POST /v1/datasets)",
            code="unknown_dataset",
            details={"dataset": ref},
        ) from None


@dataclass(frozen=True)
class Grades:
    """A model's pass grades resolved to absolute accuracy limits, and what they came from."""

    rules: tuple[GradeRule, ...]
    declared: dict[str, Any] | None


def resolve_grades(net: BinaryNetwork, ideal_accuracy: float | None) -> Grades:
    if net.pass_limits is None:
        return Grades(DEFAULT_PASS_GRADES, None)
    try:
        limits = net.pass_limits.resolve(ideal_accuracy)
    except ModelFormatError as e:
        raise InvalidInputError(str(e), code="invalid_model") from e
    rules = tuple(GradeRule(g.soft_bin, 1, g.label, g.min_accuracy) for g in limits)
    return Grades(rules, net.pass_limits.as_dict())


def grade_rules(model: Model) -> tuple[GradeRule, ...]:
    """A stored model's pass grades (the default table for rows without one)."""
    if not model.grade_table:
        return DEFAULT_PASS_GRADES
    return tuple(GradeRule(int(g[0]), int(g[1]), str(g[2]), float(g[3])) for g in model.grade_table)


def upload_model(
    session: Session,
    *,
    name: str,
    version: str,
    data: bytes,
    software_accuracy: float | None,
    max_bytes: int,
    settings: Settings,
    actor: str,
    calibration_dataset: str | None = None,
    test_dataset: str | None = None,
) -> Model:
    """Validate a model file, bind it to its datasets (the file's, or those given here), measure
    its ideal-chip accuracy and store it; 422 when the model and its datasets do not match."""
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"model file of {len(data)} bytes; the limit is {max_bytes}")
    net, format_version = parse_network(data)
    if models.get(session, name, version) is not None:
        raise ConflictError(f"model {name}@{version} exists; upload a new version", code="model_exists")
    refs = _refs(net, settings, calibration_dataset, test_dataset)
    cal_row, test_row = _resolve(session, settings, refs.calibration), _resolve(session, settings, refs.test)
    cal, test = (
        dataset_service.load_dataset(session, cal_row),
        dataset_service.load_dataset(session, test_row),
    )
    check_dataset_fits(net, cal_row, cal, "calibration")
    check_dataset_fits(net, test_row, test, "test")
    x, y = test_samples(net, test, settings.functional_test_clips)
    ideal = ideal_chip_agreement(net, x, y).chip_accuracy
    grades = resolve_grades(net, ideal)
    metric = net.metrics.get(SOFTWARE_ACCURACY_METRIC)
    digest = hashlib.sha256(data).hexdigest()
    row = Model(
        name=name,
        version=version,
        blob=data,
        sha256=digest,
        size_bytes=len(data),
        class_names=list(net.class_names),
        software_accuracy=software_accuracy
        if software_accuracy is not None
        else (float(metric) if isinstance(metric, int | float) and not isinstance(metric, bool) else None),
        format_version=format_version,
        input_shape=list(net.input_shape),
        preprocessing=net.prep.kind,
        calibration_dataset_id=cal_row.id,
        test_dataset_id=test_row.id,
        ideal_accuracy=ideal,
        pass_limits=grades.declared,
        grade_table=[list(r) for r in grades.rules],
    )
    try:
        models.add(session, row)
    except IntegrityError as e:  # uploaded concurrently
        raise ConflictError(
            f"model {name}@{version} exists; upload a new version", code="model_exists"
        ) from e
    audit.add(
        session,
        actor=actor,
        action="model.upload",
        target=f"{name}@{version}",
        details={"sha256": digest, "calibration_dataset": refs.calibration, "test_dataset": refs.test},
    )
    return row


def get_model(session: Session, name: str, version: str) -> Model:
    row = models.get(session, name, version)
    if row is None:
        raise NotFoundError(f"no model {name}@{version}")
    return row


def list_models(session: Session, *, name: str | None, limit: int, offset: int) -> tuple[list[Model], int]:
    return models.search(session, name=name, limit=limit, offset=offset)


def reference_model_files() -> list[tuple[str, bytes]]:
    """The committed reference models (``app/nn/reference``): KWS and digits."""
    from app.nn.digits import digits_reference_path

    out = []
    for path in (reference_model_path(), digits_reference_path()):
        if not path.exists():
            log.warning("reference model %s is missing; the service starts without it", path)
            continue
        out.append((path.name, path.read_bytes()))
    return out


def ensure_reference_models(session: Session, settings: Settings, *, actor: str = "startup") -> list[Model]:
    """Register the committed reference models unless they are already stored."""
    rows = []
    for _, data in reference_model_files():
        network = load_model_bytes(data)
        existing = models.get(session, network.name, network.version)
        if existing is not None:
            rows.append(existing)
            continue
        rows.append(
            upload_model(
                session,
                name=network.name,
                version=network.version,
                data=data,
                software_accuracy=None,
                max_bytes=max(len(data), 1),
                settings=settings,
                actor=actor,
            )
        )
    return rows

"""Uploading networks (validated by :func:`app.nn.model.load_model_bytes`) and reading them back."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.repositories import audit, models
from app.db.tables import Model
from app.errors import ConflictError, InvalidInputError, NotFoundError, PayloadTooLargeError
from app.nn.features import DEFAULT_SPEC
from app.nn.model import ModelFormatError, load_model_bytes, reference_model_path, to_program
from hardware.chip import ChipError, ChipGeometry, map_network

log = logging.getLogger(__name__)

# The metric app.nn.train writes into a model's manifest.
SOFTWARE_ACCURACY_METRIC = "software_test_accuracy"


@dataclass(frozen=True)
class ModelInfo:
    """What the service keeps from a parsed model file."""

    class_names: list[str]
    software_accuracy: float | None


def inspect_model(data: bytes) -> ModelInfo:
    """Parse and validate an uploaded model file; the one place the upload path touches ``app.nn``."""
    try:
        network = load_model_bytes(data)
    except ModelFormatError as e:
        raise InvalidInputError(f"not a valid model file: {e}", code="invalid_model") from e
    if network.input_shape != DEFAULT_SPEC.input_shape:
        raise InvalidInputError(
            f"model input {network.input_shape} differs from the station's KWS features {DEFAULT_SPEC.input_shape}",
            code="invalid_model_input",
        )
    try:
        map_network(to_program(network), ChipGeometry())
    except ChipError as e:
        raise InvalidInputError(f"model does not fit the chip: {e}", code="model_does_not_fit") from e
    accuracy = network.metrics.get(SOFTWARE_ACCURACY_METRIC)
    return ModelInfo(
        class_names=list(network.class_names),
        software_accuracy=float(accuracy) if isinstance(accuracy, int | float) else None,
    )


def upload_model(
    session: Session,
    *,
    name: str,
    version: str,
    data: bytes,
    software_accuracy: float | None,
    max_bytes: int,
    actor: str,
) -> Model:
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"model file of {len(data)} bytes; the limit is {max_bytes}")
    info = inspect_model(data)
    if models.get(session, name, version) is not None:
        raise ConflictError(f"model {name}@{version} exists; upload a new version", code="model_exists")
    digest = hashlib.sha256(data).hexdigest()
    try:
        row = models.add(
            session,
            Model(
                name=name,
                version=version,
                blob=data,
                sha256=digest,
                size_bytes=len(data),
                class_names=info.class_names,
                software_accuracy=software_accuracy
                if software_accuracy is not None
                else info.software_accuracy,
            ),
        )
    except IntegrityError as e:  # uploaded concurrently
        raise ConflictError(
            f"model {name}@{version} exists; upload a new version", code="model_exists"
        ) from e
    audit.add(
        session, actor=actor, action="model.upload", target=f"{name}@{version}", details={"sha256": digest}
    )
    return row


def get_model(session: Session, name: str, version: str) -> Model:
    row = models.get(session, name, version)
    if row is None:
        raise NotFoundError(f"no model {name}@{version}")
    return row


def list_models(session: Session, *, name: str | None, limit: int, offset: int) -> tuple[list[Model], int]:
    return models.search(session, name=name, limit=limit, offset=offset)


def ensure_reference_model(session: Session, *, actor: str = "startup") -> Model | None:
    """Register the committed reference KWS model (``app/nn/reference``) unless it is already stored."""
    path = reference_model_path()
    if not path.exists():
        log.warning("reference model %s is missing; the service starts without it", path)
        return None
    data = path.read_bytes()
    network = load_model_bytes(data)
    existing = models.get(session, network.name, network.version)
    if existing is not None:
        return existing
    return upload_model(
        session,
        name=network.name,
        version=network.version,
        data=data,
        software_accuracy=None,
        max_bytes=max(len(data), 1),
        actor=actor,
    )

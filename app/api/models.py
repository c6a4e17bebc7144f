"""/v1/models: upload networks (multipart or raw bytes), list them, read one by ``name@version``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from app.api.deps import EngineerAccess, PageDep, ReadAccess, SessionDep, SettingsDep
from app.api.edge import INVALID_CHARACTERS_MESSAGE, control_char_locations, invalid_characters_details
from app.api.idempotency import IdempotencyDep
from app.api.schemas.common import CONFLICT, NOT_FOUND, Page, error_response_doc
from app.api.schemas.models import NAME_PATTERN, ModelOut
from app.api.uploads import read_file_upload
from app.errors import InvalidInputError
from app.nn.network import DATASET_REF_RE
from app.services import models

router = APIRouter(prefix="/models", tags=["models"])
DATASET_REF_PATTERN = DATASET_REF_RE.pattern


class ModelMeta(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=NAME_PATTERN)
    version: str = Field(min_length=1, max_length=32, pattern=NAME_PATTERN)
    software_accuracy: float | None = Field(None, ge=0.0, le=1.0)
    calibration_dataset: str | None = Field(None, max_length=97, pattern=DATASET_REF_PATTERN)
    test_dataset: str | None = Field(None, max_length=97, pattern=DATASET_REF_PATTERN)


class OnnxMeta(BaseModel):
    """What an ONNX graph does not carry: the classes of its logits, its preprocessing, its limits."""

    class_names: list[str] = Field(min_length=2, max_length=1024)
    preprocessing: dict[str, Any] | None = None
    pass_limits: dict[str, Any] | None = None


FIELDS = ("name", "version", "software_accuracy", "calibration_dataset", "test_dataset")
ONNX_FIELDS = ("class_names", "preprocessing", "pass_limits")
ONNX_TYPES = ("application/onnx", "application/x-onnx")


@dataclass(frozen=True)
class ModelUpload:
    meta: ModelMeta
    data: bytes
    onnx: OnnxMeta | None = None


def _onnx_meta(fields: dict[str, str | None]) -> OnnxMeta:
    """The ONNX form fields, each a JSON value (``class_names`` a list, the others objects)."""
    values: dict[str, Any] = {}
    for k in ONNX_FIELDS:
        raw = fields.get(k)
        if raw is None:
            continue
        try:
            values[k] = json.loads(raw)
        except ValueError as e:
            raise RequestValidationError(
                [{"loc": ("body", k), "msg": f"not valid JSON: {e}", "type": "json_invalid"}]
            ) from e
        bad = next(control_char_locations(values[k], ["body", k]), None)
        if bad is not None:
            raise InvalidInputError(
                INVALID_CHARACTERS_MESSAGE, code="invalid_characters", details=invalid_characters_details(bad)
            )
    try:
        return OnnxMeta.model_validate(values)
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        ) from e


def _validated_meta(fields: dict[str, Any], where: str) -> ModelMeta:
    try:
        return ModelMeta.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": (where, *err["loc"])} for err in e.errors(include_url=False)]
        ) from e


async def read_model_upload(
    request: Request,
    settings: SettingsDep,
    name: Annotated[
        str | None, Query(description="Model name (raw-bytes uploads).", examples=["kws-bnn"])
    ] = None,
    version: Annotated[
        str | None, Query(description="Model version (raw-bytes uploads).", examples=["1.0.0"])
    ] = None,
    software_accuracy: Annotated[
        float | None,
        Query(description="Accuracy of the float/software model, 0-1 (optional).", examples=[0.874]),
    ] = None,
    calibration_dataset: Annotated[
        str | None,
        Query(
            description="Calibration dataset name@version (overrides the file's).",
            examples=["digits-calib@1"],
        ),
    ] = None,
    test_dataset: Annotated[
        str | None,
        Query(
            description="Functional-test dataset name@version (overrides the file's).",
            examples=["digits-test@1"],
        ),
    ] = None,
) -> ModelUpload:
    """The upload as either ``multipart/form-data`` (fields ``file``, ``name``, ``version``,
    ``software_accuracy``, ``calibration_dataset``, ``test_dataset``) or
    ``application/octet-stream`` (the same fields in the query)."""
    upload = await read_file_upload(request, settings.max_model_bytes, FIELDS + ONNX_FIELDS)
    query: dict[str, Any] = {
        "name": name,
        "version": version,
        "software_accuracy": software_accuracy,
        "calibration_dataset": calibration_dataset,
        "test_dataset": test_dataset,
    }
    if upload.fields is None:
        return ModelUpload(_validated_meta(query, "query"), upload.data)
    merged = {k: v if v is not None else query[k] for k, v in upload.fields.items() if k in FIELDS}
    meta = _validated_meta(merged, "body")
    if upload.media_type in ONNX_TYPES:
        return ModelUpload(meta, upload.data, _onnx_meta(upload.fields))
    return ModelUpload(meta, upload.data)


UPLOAD_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "name", "version"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "name": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 64},
                        "version": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 32},
                        "software_accuracy": {"type": "number", "minimum": 0, "maximum": 1},
                        "calibration_dataset": {"type": "string", "pattern": DATASET_REF_PATTERN},
                        "test_dataset": {"type": "string", "pattern": DATASET_REF_PATTERN},
                        "class_names": {"type": "string", "description": "ONNX files: a JSON list"},
                        "preprocessing": {"type": "string", "description": "ONNX files: a JSON object"},
                        "pass_limits": {"type": "string", "description": "ONNX files: a JSON object"},
                    },
                },
                "example": {
                    "file": "(model file)",
                    "name": "kws-bnn",
                    "version": "1.0.0",
                    "software_accuracy": 0.874,
                },
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "example": "(model file bytes; name and version in the query)",
            },
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=ModelOut,
    openapi_extra=UPLOAD_BODY_DOC,
    responses={
        **CONFLICT,
        413: error_response_doc(
            "The file is over the size limit", "payload_too_large", "model file over the limit"
        ),
        415: error_response_doc(
            "Neither multipart nor raw bytes", "unsupported_media_type", "content type 'text/plain'"
        ),
    },
)
def upload_model(
    principal: EngineerAccess,  # first: FastAPI resolves dependencies in order, and the body may be large
    upload: Annotated[ModelUpload, Depends(read_model_upload)],
    session: SessionDep,
    settings: SettingsDep,
    idem: IdempotencyDep,
) -> JSONResponse:
    """Upload a network file; it is parsed, validated and checked against its calibration and test
    datasets before it is stored. 422 ``invalid_model`` when it does not parse,
    ``model_does_not_fit``, ``unknown_dataset``, ``class_mismatch``, ``dataset_shape_mismatch`` or
    ``dataset_features_mismatch`` when it does not match its datasets; 409 ``model_exists`` when
    the name and version are taken.

    An ONNX file (``torch.onnx.export`` of a network of the supported layers; multipart part of
    type ``application/onnx``, with the form fields ``class_names``, and optionally
    ``preprocessing`` and ``pass_limits``, as JSON) is converted to a model file first; an operator
    outside the supported patterns is 422 ``unsupported_operator`` with its ``op_type`` and
    ``node``."""
    meta = upload.meta
    payload = {**meta.model_dump(), "sha256": hashlib.sha256(upload.data).hexdigest()}
    if upload.onnx is not None:
        payload["onnx"] = upload.onnx.model_dump()

    def action() -> ModelOut:
        data = upload.data
        if upload.onnx is not None:
            data = models.model_from_onnx(
                upload.data,
                name=meta.name,
                version=meta.version,
                class_names=upload.onnx.class_names,
                preprocessing=upload.onnx.preprocessing,
                pass_limits=upload.onnx.pass_limits,
            )
        row = models.upload_model(
            session,
            name=meta.name,
            version=meta.version,
            data=data,
            software_accuracy=meta.software_accuracy,
            max_bytes=settings.max_model_bytes,
            settings=settings,
            actor=principal.actor,
            calibration_dataset=meta.calibration_dataset,
            test_dataset=meta.test_dataset,
        )
        return ModelOut.of(row)

    return idem.respond(payload, action)


@router.get("")
def list_models(
    session: SessionDep,
    _: ReadAccess,
    page: PageDep,
    name: Annotated[str | None, Query(max_length=64, examples=["kws-bnn"])] = None,
) -> Page[ModelOut]:
    """Models, newest first; ``name`` lists the versions of one model."""
    items, total = models.list_models(session, name=name, limit=page.limit, offset=page.offset)
    return Page(items=[ModelOut.of(m) for m in items], total=total, limit=page.limit, offset=page.offset)


@router.get("/{name}@{version}", responses=NOT_FOUND)
def get_model(
    name: Annotated[str, Path(max_length=64, examples=["kws-bnn"])],
    version: Annotated[str, Path(max_length=32, examples=["1.0.0"])],
    session: SessionDep,
    _: ReadAccess,
) -> ModelOut:
    return ModelOut.of(models.get_model(session, name, version))

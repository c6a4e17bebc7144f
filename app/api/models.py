"""/v1/models: upload networks (multipart or raw bytes), list them, read one by ``name@version``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.types import Message

from app.api.deps import EngineerAccess, PageDep, ReadAccess, SessionDep, SettingsDep
from app.api.idempotency import IdempotencyDep
from app.api.schemas.common import CONFLICT, NOT_FOUND, Page, error_response_doc
from app.api.schemas.models import NAME_PATTERN, ModelOut
from app.errors import InvalidInputError, PayloadTooLargeError, UnsupportedMediaTypeError
from app.services import models

router = APIRouter(prefix="/models", tags=["models"])

MULTIPART_OVERHEAD_BYTES = 64 * 1024  # room for the boundaries and the small form fields


class ModelMeta(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=NAME_PATTERN)
    version: str = Field(min_length=1, max_length=32, pattern=NAME_PATTERN)
    software_accuracy: float | None = Field(None, ge=0.0, le=1.0)


@dataclass(frozen=True)
class ModelUpload:
    meta: ModelMeta
    data: bytes


async def _read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes; the limit is {limit}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLargeError(f"request body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


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
) -> ModelUpload:
    """The upload as either ``multipart/form-data`` (fields ``file``, ``name``, ``version``,
    ``software_accuracy``) or ``application/octet-stream`` (name and version in the query)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit = settings.max_model_bytes
    if media_type == "multipart/form-data":
        body = await _read_capped(request, limit + MULTIPART_OVERHEAD_BYTES)

        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async with Request(request.scope, replay).form(max_files=1, max_fields=8) as form:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise InvalidInputError("multipart upload without a 'file' part", code="validation_error")
            data = await file.read()
            form_fields = {k: form.get(k) for k in ("name", "version", "software_accuracy")}
        query = _query(name, version, software_accuracy)
        meta = _validated_meta({k: v if v is not None else query[k] for k, v in form_fields.items()}, "body")
    elif media_type == "application/octet-stream":
        data = await _read_capped(request, limit)
        meta = _validated_meta(_query(name, version, software_accuracy), "query")
    else:
        raise UnsupportedMediaTypeError(
            f"content type {media_type or 'missing'!r}: send multipart/form-data or application/octet-stream"
        )
    if len(data) > limit:
        raise PayloadTooLargeError(f"model file of {len(data)} bytes; the limit is {limit}")
    return ModelUpload(meta, data)


def _query(name: str | None, version: str | None, software_accuracy: float | None) -> dict[str, Any]:
    return {"name": name, "version": version, "software_accuracy": software_accuracy}


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
    """Upload a network file; it is parsed and validated before it is stored. 422 ``invalid_model``
    when it does not parse, 409 ``model_exists`` when the name and version are taken."""
    meta = upload.meta
    payload = {**meta.model_dump(), "sha256": hashlib.sha256(upload.data).hexdigest()}

    def action() -> ModelOut:
        row = models.upload_model(
            session,
            name=meta.name,
            version=meta.version,
            data=upload.data,
            software_accuracy=meta.software_accuracy,
            max_bytes=settings.max_model_bytes,
            actor=principal.actor,
        )
        return ModelOut.model_validate(row)

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
    return Page(
        items=[ModelOut.model_validate(m) for m in items], total=total, limit=page.limit, offset=page.offset
    )


@router.get("/{name}@{version}", responses=NOT_FOUND)
def get_model(
    name: Annotated[str, Path(max_length=64, examples=["kws-bnn"])],
    version: Annotated[str, Path(max_length=32, examples=["1.0.0"])],
    session: SessionDep,
    _: ReadAccess,
) -> ModelOut:
    return ModelOut.model_validate(models.get_model(session, name, version))

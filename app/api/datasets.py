"""/v1/datasets: upload labelled datasets (one ``.npz``: ``x``, ``y`` and a manifest), list them,
read one by ``name@version``."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from app.api.deps import EngineerAccess, PageDep, ReadAccess, SessionDep, SettingsDep
from app.api.idempotency import IdempotencyDep
from app.api.schemas.common import CONFLICT, NOT_FOUND, Page, error_response_doc
from app.api.schemas.datasets import DatasetOut
from app.api.uploads import FileUpload, read_file_upload
from app.nn.dataset import DATASET_ROLES
from app.services import datasets

router = APIRouter(prefix="/datasets", tags=["datasets"])

UPLOAD_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                },
                "example": {"file": "(dataset .npz: x float32, y int64, manifest.json)"},
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "example": "(dataset .npz bytes: x, y, manifest.json)",
            },
        },
    }
}


async def read_dataset_upload(request: Request, settings: SettingsDep) -> FileUpload:
    """The dataset file, as ``multipart/form-data`` (a ``file`` part) or ``application/octet-stream``."""
    return await read_file_upload(request, settings.max_dataset_bytes, ())


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    openapi_extra=UPLOAD_BODY_DOC,
    responses={
        **CONFLICT,
        413: error_response_doc(
            "The file is over the size limit", "payload_too_large", "file over the limit"
        ),
        415: error_response_doc("Neither multipart nor raw bytes", "unsupported_media_type", "content type"),
    },
)
def upload_dataset(
    principal: EngineerAccess,  # first: FastAPI resolves dependencies in order, and the body may be large
    upload: Annotated[FileUpload, Depends(read_dataset_upload)],
    session: SessionDep,
    settings: SettingsDep,
    idem: IdempotencyDep,
) -> JSONResponse:
    """Upload a dataset file; its manifest names it (``name``, ``version``). It is validated
    strictly before it is stored: 422 ``invalid_dataset`` with the reason, 409 ``dataset_exists``."""
    payload = {"sha256": hashlib.sha256(upload.data).hexdigest()}

    def action() -> DatasetOut:
        row = datasets.upload_dataset(
            session, data=upload.data, max_bytes=settings.max_dataset_bytes, actor=principal.actor
        )
        return DatasetOut.model_validate(row)

    return idem.respond(payload, action)


@router.get("")
def list_datasets(
    session: SessionDep,
    _: ReadAccess,
    page: PageDep,
    name: Annotated[str | None, Query(max_length=64, examples=["digits-test"])] = None,
    role: Annotated[str | None, Query(pattern=f"^({'|'.join(DATASET_ROLES)})$", examples=["test"])] = None,
) -> Page[DatasetOut]:
    """Datasets, newest first; ``name`` lists the versions of one dataset, ``role`` filters."""
    items, total = datasets.list_datasets(session, name=name, role=role, limit=page.limit, offset=page.offset)
    return Page(
        items=[DatasetOut.model_validate(d) for d in items], total=total, limit=page.limit, offset=page.offset
    )


@router.get("/{name}@{version}", responses=NOT_FOUND)
def get_dataset(
    name: Annotated[str, Path(max_length=64, examples=["digits-test"])],
    version: Annotated[str, Path(max_length=32, examples=["1"])],
    session: SessionDep,
    _: ReadAccess,
) -> DatasetOut:
    return DatasetOut.model_validate(datasets.get_dataset(session, name, version))

"""Reading a file upload: ``multipart/form-data`` (a ``file`` part and small form fields) or
``application/octet-stream`` (the bytes alone), refused with 413 as soon as it passes its limit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.types import Message

from app.api.edge import INVALID_CHARACTERS_MESSAGE, has_control_chars, invalid_characters_details
from app.errors import InvalidInputError, PayloadTooLargeError, UnsupportedMediaTypeError

MULTIPART_OVERHEAD_BYTES = 64 * 1024  # room for the boundaries and the small form fields


@dataclass(frozen=True)
class FileUpload:
    """The file's bytes, its media type as sent, and the form fields (None for raw-bytes uploads)."""

    data: bytes
    media_type: str
    fields: dict[str, str | None] | None


async def read_capped(request: Request, limit: int) -> bytes:
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


def _refuse_control_chars(fields: dict[str, str | None]) -> None:
    """Form fields are names, numbers or JSON texts: line breaks and tabs may lay out JSON, nothing else
    below U+0020 (the JSON values themselves are checked once parsed)."""
    for name, value in fields.items():
        if value is not None and has_control_chars(
            value.replace("\n", "").replace("\r", "").replace("\t", "")
        ):
            raise InvalidInputError(
                INVALID_CHARACTERS_MESSAGE,
                code="invalid_characters",
                details=invalid_characters_details(["body", name]),
            )


async def read_file_upload(
    request: Request,
    limit: int,
    field_names: Sequence[str],
    raw_types: Sequence[str] = ("application/octet-stream",),
) -> FileUpload:
    """The uploaded file (at most ``limit`` bytes) and the named form fields; 415 for other types."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        body = await read_capped(request, limit + MULTIPART_OVERHEAD_BYTES)

        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async with Request(request.scope, replay).form(max_files=1, max_fields=len(field_names) + 4) as form:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise InvalidInputError("multipart upload without a 'file' part", code="validation_error")
            data = await file.read()
            values = {k: form.get(k) for k in field_names}
            form_fields = {k: v if isinstance(v, str) else None for k, v in values.items()}
            _refuse_control_chars(form_fields)
            fields: dict[str, str | None] | None = form_fields
            part_type = (file.content_type or "application/octet-stream").split(";")[0].strip().lower()
    elif media_type in raw_types:
        data = await read_capped(request, limit)
        fields, part_type = None, media_type
    else:
        raise UnsupportedMediaTypeError(
            f"content type {media_type or 'missing'!r}: send multipart/form-data or {' or '.join(raw_types)}"
        )
    if len(data) > limit:
        raise PayloadTooLargeError(f"file of {len(data)} bytes; the limit is {limit}")
    return FileUpload(data, part_type, fields)

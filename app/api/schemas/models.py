"""Uploaded networks."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from app.api.schemas.common import with_example

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class ModelOut(BaseModel):
    model_config = with_example(
        {
            "name": "kws-bnn",
            "version": "1.0.0",
            "sha256": "9f2c...e1",
            "size_bytes": 183424,
            "class_names": ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"],
            "software_accuracy": 0.874,
            "created_at": "2026-01-05T08:30:00Z",
        },
        from_attributes=True,
    )

    name: str
    version: str
    sha256: str
    size_bytes: int
    class_names: list[str]
    software_accuracy: float | None
    created_at: datetime

"""API keys."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from app.api.schemas.common import with_example
from app.db.tables import Role

KEY_EXAMPLE = {
    "prefix": "cim_1a2b3c4d",
    "role": "station",
    "name": "tester-07",
    "created_at": "2026-01-05T08:30:00Z",
    "revoked_at": None,
}


class KeyIn(BaseModel):
    model_config = with_example({"role": "station", "name": "tester-07"}, extra="forbid")

    role: Role
    name: str = Field(min_length=1, max_length=64)


class KeyOut(BaseModel):
    model_config = with_example(KEY_EXAMPLE, from_attributes=True)

    prefix: str = Field(description="The key's public first characters; names it in listings.")
    role: Role
    name: str
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    """The new key. ``key`` is shown this once and is not stored: keep it."""

    model_config = with_example(
        {**KEY_EXAMPLE, "key": "cim_1a2b3c4d_Qm9vdHN0cmFwIGtleSBleGFtcGxlIG9ubHkgISEhISE"},
        from_attributes=True,
    )

    key: str

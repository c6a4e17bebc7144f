"""Dies and their current signature."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.common import with_example
from app.api.schemas.provenance import ProvenanceOut
from app.services.dies import DieView


class SignatureSummary(BaseModel):
    """The figures of a die's current signature (the blob itself is not returned here)."""

    model_config = ConfigDict(from_attributes=True)

    version: int
    sha256: str
    reads: int
    tester_s: float
    n_dead_cols: int
    n_stuck_cells: int
    offset_spread_mac: float
    retries: int = Field(description="Driver calls repeated after a timeout or a lost contact.")
    provenance: ProvenanceOut | None = Field(description="The tester that measured it (None: not recorded).")
    created_at: datetime


class DieOut(BaseModel):
    model_config = with_example(
        {
            "ecid": "LOT0001-W01-X+001Y+000",
            "lot_id": "LOT0001",
            "wafer": 1,
            "x": 1,
            "y": 0,
            "created_at": "2026-01-05T08:30:00Z",
            "current_signature": None,
        }
    )

    ecid: str
    lot_id: str
    wafer: int
    x: int
    y: int
    created_at: datetime
    current_signature: SignatureSummary | None

    @classmethod
    def of(cls, view: DieView) -> DieOut:
        d = view.die
        sig = view.current_signature
        return cls(
            ecid=d.ecid,
            lot_id=d.wafer.lot_id,
            wafer=d.wafer.number,
            x=d.x,
            y=d.y,
            created_at=d.created_at,
            current_signature=None if sig is None else SignatureSummary.model_validate(sig),
        )

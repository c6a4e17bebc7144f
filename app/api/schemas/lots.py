"""Lots, wafers and die maps."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.api.schemas.common import with_example
from app.services.lots import Site, circular_sites, rectangular_sites
from hardware.driver import DieAddress

Coordinate = Annotated[int, Field(ge=-999, le=999)]
MAX_SHAPE_SITES = 100_000


class CircularShape(BaseModel):
    """A round wafer: every die whose square lies wholly inside a circle ``diameter`` die pitches
    across, centred on die (0, 0)."""

    kind: Literal["circular"]
    diameter: int = Field(ge=1, le=300, description="Wafer diameter in die pitches.")

    def sites(self) -> list[Site]:
        return circular_sites(self.diameter)


class RectangularShape(BaseModel):
    """A ``columns`` x ``rows`` grid, die (0, 0) in a corner."""

    kind: Literal["rectangular"]
    columns: int = Field(ge=1, le=1000)
    rows: int = Field(ge=1, le=1000)

    @model_validator(mode="after")
    def _not_too_many(self) -> RectangularShape:
        if self.columns * self.rows > MAX_SHAPE_SITES:
            raise ValueError(f"{self.columns} x {self.rows} sites; at most {MAX_SHAPE_SITES}")
        return self

    def sites(self) -> list[Site]:
        return rectangular_sites(self.columns, self.rows)


Shape = Annotated[CircularShape | RectangularShape, Field(discriminator="kind")]


class WaferIn(BaseModel):
    """A wafer and its die map: either an explicit list of ``[x, y]`` sites or a shape descriptor."""

    model_config = ConfigDict(extra="forbid")

    number: int = Field(ge=1, le=99, description="Wafer number in the lot (slot), 1-99.")
    sites: list[tuple[Coordinate, Coordinate]] | None = Field(
        None, min_length=1, max_length=MAX_SHAPE_SITES, description="Die sites as [x, y] pairs."
    )
    shape: Shape | None = None

    @model_validator(mode="after")
    def _one_die_map(self) -> WaferIn:
        if (self.sites is None) == (self.shape is None):
            raise ValueError("give the die map as exactly one of 'sites' or 'shape'")
        if self.sites is not None and len(set(self.sites)) != len(self.sites):
            raise ValueError(f"wafer {self.number}: duplicate die sites")
        return self

    def site_list(self) -> list[Site]:
        return list(self.sites) if self.sites is not None else self.shape.sites()  # type: ignore[union-attr]


class LotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lot_id: str = Field(
        min_length=1, max_length=32, description="1-32 of A-Z, 0-9, '_' or '.', starting alphanumeric."
    )
    product: str = Field(min_length=1, max_length=64)
    wafers: list[WaferIn] = Field(min_length=1, max_length=99)

    @field_validator("lot_id")
    @classmethod
    def _ecid_safe(cls, v: str) -> str:
        DieAddress(v, 1, 0, 0)  # the ECID rules are the hardware layer's; raises ValueError
        return v

    @model_validator(mode="after")
    def _unique_wafers(self) -> LotIn:
        numbers = [w.number for w in self.wafers]
        if len(set(numbers)) != len(numbers):
            raise ValueError("duplicate wafer numbers")
        return self


LOT_IN_EXAMPLES: dict[str, Any] = {
    "sites": {
        "summary": "Die map as explicit sites",
        "value": {
            "lot_id": "LOT0001",
            "product": "KWS-BCIM-1",
            "wafers": [{"number": 1, "sites": [[0, 0], [1, 0], [0, 1], [1, 1]]}],
        },
    },
    "shape": {
        "summary": "Die map from a shape descriptor",
        "value": {
            "lot_id": "LOT0002",
            "product": "KWS-BCIM-1",
            "wafers": [
                {"number": 1, "shape": {"kind": "circular", "diameter": 12}},
                {"number": 2, "shape": {"kind": "rectangular", "columns": 8, "rows": 6}},
            ],
        },
    },
}


class WaferSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int
    n_sites: int
    shape: dict[str, Any] | None


class LotOut(BaseModel):
    model_config = with_example(
        {
            "lot_id": "LOT0001",
            "product": "KWS-BCIM-1",
            "created_at": "2026-01-05T08:30:00Z",
            "n_dies": 4,
            "wafers": [{"number": 1, "n_sites": 4, "shape": None}],
        },
        from_attributes=True,
    )

    lot_id: str
    product: str
    created_at: datetime
    n_dies: int
    wafers: list[WaferSummary]

    @classmethod
    def of(cls, lot: Any) -> LotOut:
        return cls(
            lot_id=lot.lot_id,
            product=lot.product,
            created_at=lot.created_at,
            n_dies=sum(w.n_sites for w in lot.wafers),
            wafers=[WaferSummary.model_validate(w) for w in lot.wafers],
        )


class WaferOut(BaseModel):
    model_config = with_example(
        {
            "lot_id": "LOT0001",
            "number": 1,
            "n_sites": 4,
            "shape": None,
            "sites": [[0, 0], [1, 0], [0, 1], [1, 1]],
        },
        from_attributes=True,
    )

    lot_id: str
    number: int
    n_sites: int
    shape: dict[str, Any] | None
    sites: list[tuple[int, int]] = Field(validation_alias="die_map", description="[x, y] sorted by (y, x).")

"""/v1/lots/{lot}/...: test-data exports (STDF V4, SEMI E142 wafer maps, per-die CSV and Parquet)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import Response

from app.api.deps import ReadAccess, SessionDep
from app.api.health import VERSION
from app.api.schemas import dashboard as examples
from app.api.schemas.common import NOT_FOUND
from app.services import reporting

router = APIRouter(prefix="/lots", tags=["exports"])

LotIdPath = Annotated[str, Path(max_length=32, examples=["LOT0001"])]
WaferPath = Annotated[int, Path(ge=1, le=99, examples=[1])]

STDF_MEDIA_TYPE = "application/octet-stream"
E142_MEDIA_TYPE = "application/xml"
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"


def _doc(media_type: str, description: str, example: str) -> dict[int | str, dict[str, Any]]:
    content = {media_type: {"schema": {"type": "string", "format": "binary"}, "example": example}}
    return {200: {"content": content, "description": description}, **NOT_FOUND}


def _file(data: bytes, media_type: str, filename: str) -> Response:
    return Response(
        data, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )


@router.get(
    "/{lot_id}/stdf",
    response_class=Response,
    responses=_doc(STDF_MEDIA_TYPE, "The lot as an STDF V4 file.", "(binary STDF V4, little-endian)"),
)
def lot_stdf(lot_id: LotIdPath, session: SessionDep, _: ReadAccess) -> Response:
    """STDF V4 of the lot: FAR, MIR, WCR, WIR/WRR per wafer, PIR/PTR.../PRR per tested die (PART_ID is
    the ECID), TSR per test, HBR, SBR, PCR, MRR. Dies without a functional-test result are left out."""
    return _file(reporting.lot_stdf(session, lot_id, version=VERSION), STDF_MEDIA_TYPE, f"{lot_id}.stdf")


@router.get(
    "/{lot_id}/wafers/{number}/e142",
    response_class=Response,
    responses=_doc(E142_MEDIA_TYPE, "The wafer's soft-bin map as SEMI E142 XML.", examples.E142_EXAMPLE),
)
def wafer_e142(lot_id: LotIdPath, number: WaferPath, session: SessionDep, _: ReadAccess) -> Response:
    """SEMI E142 soft-bin map of one wafer; origin upper left, x right, y down, notch at the bottom."""
    data = reporting.wafer_e142(session, lot_id, number)
    return _file(data, E142_MEDIA_TYPE, f"{lot_id}-W{number:02d}.e142.xml")


@router.get(
    "/{lot_id}/dies.csv",
    response_class=Response,
    responses=_doc(CSV_MEDIA_TYPE, "One row per die.", examples.CSV_EXAMPLE),
)
def lot_dies_csv(lot_id: LotIdPath, session: SessionDep, _: ReadAccess) -> Response:
    """Per-die results of the lot (bins, accuracies, signature figures, tester time) as CSV."""
    return _file(reporting.lot_dies_csv(session, lot_id), CSV_MEDIA_TYPE, f"{lot_id}-dies.csv")


@router.get(
    "/{lot_id}/dies.parquet",
    response_class=Response,
    responses=_doc(PARQUET_MEDIA_TYPE, "One row per die, typed columns.", "(binary Parquet)"),
)
def lot_dies_parquet(lot_id: LotIdPath, session: SessionDep, _: ReadAccess) -> Response:
    """The same table as ``dies.csv`` as Parquet (503 ``parquet_unavailable`` without pyarrow)."""
    return _file(reporting.lot_dies_parquet(session, lot_id), PARQUET_MEDIA_TYPE, f"{lot_id}-dies.parquet")

"""/v1/lots/{lot}/...: test-data exports (STDF V4, SEMI E142 wafer maps, per-die CSV and Parquet), one
model per file."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import Response

from app.api.deps import ModelFilter, ReadAccess, SessionDep
from app.api.health import VERSION
from app.api.schemas import dashboard as examples
from app.api.schemas.common import error_response_doc
from app.services.reporting import exports as files
from app.services.reporting.exports import ExportFile

router = APIRouter(prefix="/lots", tags=["exports"])

LotIdPath = Annotated[str, Path(max_length=32, examples=["LOT0001"])]
WaferPath = Annotated[int, Path(ge=1, le=99, examples=[1])]

STDF_MEDIA_TYPE = "application/octet-stream"
E142_MEDIA_TYPE = "application/xml"
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"

ERRORS: dict[int | str, dict[str, Any]] = {
    404: error_response_doc("Unknown lot, wafer or model", "not_found", "no lot 'LOT0042'"),
    422: error_response_doc(
        "No model named and the lot was tested with several",
        "model_required",
        "lot 'LOT0001' was tested with 2 models (kws-bnn@1, digits-bnn@1); choose one with ?model=name@version",
        {"models": [{"model": "kws-bnn@1", "n_tested": 86}, {"model": "digits-bnn@1", "n_tested": 12}]},
    ),
}


def _doc(media_type: str, description: str, example: str) -> dict[int | str, dict[str, Any]]:
    content = {media_type: {"schema": {"type": "string", "format": "binary"}, "example": example}}
    return {200: {"content": content, "description": description}, **ERRORS}


def _file(export: ExportFile, media_type: str, stem: str, suffix: str) -> Response:
    """The file, named ``{stem}_{model name}_{model version}{suffix}`` (``{stem}{suffix}`` without a test)."""
    name = stem if export.model is None else f"{stem}_{export.model.replace('@', '_')}"
    return Response(
        export.data,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{name}{suffix}"'},
    )


@router.get(
    "/{lot_id}/stdf",
    response_class=Response,
    responses=_doc(STDF_MEDIA_TYPE, "The lot as an STDF V4 file.", "(binary STDF V4, little-endian)"),
)
def lot_stdf(lot_id: LotIdPath, session: SessionDep, _: ReadAccess, model: ModelFilter = None) -> Response:
    """STDF V4 of the lot with one model: FAR, MIR (`JOB_NAM`/`JOB_REV` = model name/version), WCR,
    WIR/WRR per wafer, PIR/PTR.../PRR per die tested with the model (PART_ID is the ECID), TSR per test,
    HBR, SBR, PCR, MRR. Dies without a functional-test result with the model are left out."""
    export = files.lot_stdf(session, lot_id, model=model, version=VERSION)
    return _file(export, STDF_MEDIA_TYPE, lot_id, ".stdf")


@router.get(
    "/{lot_id}/wafers/{number}/e142",
    response_class=Response,
    responses=_doc(E142_MEDIA_TYPE, "The wafer's soft-bin map as SEMI E142 XML.", examples.E142_EXAMPLE),
)
def wafer_e142(
    lot_id: LotIdPath, number: WaferPath, session: SessionDep, _: ReadAccess, model: ModelFilter = None
) -> Response:
    """SEMI E142 soft-bin map of one wafer with one model; origin upper left, x right, y down, notch at
    the bottom."""
    export = files.wafer_e142(session, lot_id, number, model=model)
    return _file(export, E142_MEDIA_TYPE, f"{lot_id}-W{number:02d}", ".e142.xml")


@router.get(
    "/{lot_id}/dies.csv",
    response_class=Response,
    responses=_doc(CSV_MEDIA_TYPE, "One row per die.", examples.CSV_EXAMPLE),
)
def lot_dies_csv(
    lot_id: LotIdPath, session: SessionDep, _: ReadAccess, model: ModelFilter = None
) -> Response:
    """Per-die results of the lot with one model (bins, accuracies, signature figures, tester time) as
    CSV; the `model` column names it."""
    export = files.lot_dies_csv(session, lot_id, model=model)
    return _file(export, CSV_MEDIA_TYPE, f"{lot_id}-dies", ".csv")


@router.get(
    "/{lot_id}/dies.parquet",
    response_class=Response,
    responses=_doc(PARQUET_MEDIA_TYPE, "One row per die, typed columns.", "(binary Parquet)"),
)
def lot_dies_parquet(
    lot_id: LotIdPath, session: SessionDep, _: ReadAccess, model: ModelFilter = None
) -> Response:
    """The same table as `dies.csv` as Parquet (503 `parquet_unavailable` without pyarrow)."""
    export = files.lot_dies_parquet(session, lot_id, model=model)
    return _file(export, PARQUET_MEDIA_TYPE, f"{lot_id}-dies", ".parquet")

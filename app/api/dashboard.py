"""The dashboard: the public HTML shell with its assets (``pages``, served at /dashboard) and the JSON
it reads (``router``, under /v1/dashboard, viewer role or higher).

The assets are served by the app itself (no CDN): the pages, script and style from
``app/dashboard/``, plotly.js from the plotly Python package.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse, HTMLResponse

from app.api.deps import ModelFilter, PageDep, ReadAccess, SessionDep
from app.api.edge import security_headers
from app.api.schemas import dashboard as examples
from app.api.schemas.common import INT32_MAX, NOT_FOUND, error_response_doc
from app.dashboard import assets
from app.errors import NotFoundError
from app.services.reporting.dies import DieReport, die_report
from app.services.reporting.jobs import JobReport, JobSummary, job_report, recent_jobs
from app.services.reporting.lots import LotList, LotReport, list_lots, lot_report
from app.services.reporting.wafers import WaferReport, wafer_report

router = APIRouter(prefix="/dashboard", tags=["dashboard"])
pages = APIRouter(prefix="/dashboard", include_in_schema=False)

LotIdPath = Annotated[str, Path(max_length=32, examples=["LOT0001"])]
WaferPath = Annotated[int, Path(ge=1, le=99, examples=[1])]
EcidPath = Annotated[str, Path(max_length=64, examples=["LOT0001-W01-X+001Y+000"])]
JobIdPath = Annotated[int, Path(ge=1, le=INT32_MAX, examples=[1])]
MAX_WAFER_DIES = 20_000  # every die of a wafer of the largest lot (max_lot_dies) in one response

Responses = dict[int | str, dict[str, Any]]
MODEL_NOT_FOUND: Responses = {
    404: error_response_doc("Unknown lot, wafer, die or model", "not_found", "no model kws-bnn@9")
}


def _ok(example: Any, errors: Responses | None = None) -> Responses:
    return {200: {"content": {"application/json": {"example": example}}}, **(errors or {})}


# ------------------------------------------------------------------------------------------- JSON
@router.get("/lots", responses=_ok(examples.LOTS_EXAMPLE, MODEL_NOT_FOUND))
def lots(session: SessionDep, _: ReadAccess, page: PageDep, model: ModelFilter = None) -> LotList:
    """Lots, newest first, with die counts, the models tested on each, the yield (pass = soft bin 1-9)
    of `model` (omitted: each lot's most-tested model) and their latest job."""
    return list_lots(session, limit=page.limit, offset=page.offset, model=model)


@router.get("/lots/{lot_id}", responses=_ok(examples.LOT_EXAMPLE, MODEL_NOT_FOUND))
def lot(lot_id: LotIdPath, session: SessionDep, _: ReadAccess, model: ModelFilter = None) -> LotReport:
    """The models tested on the lot with their yields; for `model` (omitted: the only or the most-tested
    one, named in `model`): bin pareto, accuracy before/after calibration, per-wafer trend with SPC
    limits."""
    return lot_report(session, lot_id, model=model)


@router.get("/lots/{lot_id}/wafers/{number}", responses=_ok(examples.WAFER_EXAMPLE, MODEL_NOT_FOUND))
def wafer(
    lot_id: LotIdPath,
    number: WaferPath,
    session: SessionDep,
    _: ReadAccess,
    model: ModelFilter = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_WAFER_DIES, description="Dies in this response.")
    ] = MAX_WAFER_DIES,
    offset: Annotated[int, Query(ge=0, le=INT32_MAX, description="Dies to skip.")] = 0,
) -> WaferReport:
    """The dies of the wafer (`limit` from `offset`, in (y, x) order; `n_sites` counts them all) with
    their soft bin, colour and parametric values with `model` (omitted: as for the lot). The counts,
    legend and frame are of the whole wafer."""
    report = wafer_report(session, lot_id, number, model=model)
    return dataclasses.replace(report, dies=report.dies[offset : offset + limit])


@router.get("/dies/{ecid}", responses=_ok(examples.DIE_EXAMPLE, MODEL_NOT_FOUND))
def die(ecid: EcidPath, session: SessionDep, _: ReadAccess, model: ModelFilter = None) -> DieReport:
    """A die: its final result with `model` (omitted: of the models it was tested with, the lot's
    most-tested), its signature (decoded per column when possible), weight images and functional tests
    of every model."""
    return die_report(session, ecid, model=model)


@router.get("/jobs", responses=_ok(examples.JOBS_EXAMPLE))
def jobs(
    session: SessionDep, _: ReadAccess, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> list[JobSummary]:
    """The most recent jobs."""
    return recent_jobs(session, limit=limit)


@router.get("/jobs/{job_id}", responses=_ok(examples.JOB_EXAMPLE, NOT_FOUND))
def job(job_id: JobIdPath, session: SessionDep, _: ReadAccess) -> JobReport:
    """A job's state and item progress (the job page polls this)."""
    return job_report(session, job_id)


# ------------------------------------------------------------------------------------------ pages
def _shell() -> HTMLResponse:
    return HTMLResponse(assets.shell_html(), headers={"Cache-Control": "no-cache", **security_headers()})


@pages.get("", response_class=HTMLResponse)
@pages.get("/", response_class=HTMLResponse)
def home() -> HTMLResponse:
    return _shell()


@pages.get("/lots/{lot_id}", response_class=HTMLResponse)
@pages.get("/lots/{lot_id}/wafers/{number}", response_class=HTMLResponse)
@pages.get("/dies/{ecid}", response_class=HTMLResponse)
@pages.get("/jobs/{job_id}", response_class=HTMLResponse)
def page() -> HTMLResponse:
    """Every page is the same shell; its script reads the path and fetches the data."""
    return _shell()


@pages.get("/static/{name}")
def static(name: str) -> FileResponse:
    path = assets.static_file(name)
    if path is None:
        raise NotFoundError(f"no dashboard asset {name!r}")
    return FileResponse(
        path,
        media_type=assets.media_type(name),
        headers={"Cache-Control": "max-age=3600", **security_headers()},
    )

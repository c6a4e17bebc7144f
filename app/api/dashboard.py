"""The dashboard: the public HTML shell with its assets (``pages``, served at /dashboard) and the JSON
it reads (``router``, under /v1/dashboard, viewer role or higher).

The assets are served by the app itself (no CDN): the pages, script and style from
``app/dashboard/``, plotly.js from the plotly Python package.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse, HTMLResponse

from app.api.deps import PageDep, ReadAccess, SessionDep
from app.api.schemas import dashboard as examples
from app.api.schemas.common import NOT_FOUND
from app.dashboard import assets
from app.errors import NotFoundError
from app.services import reporting

router = APIRouter(prefix="/dashboard", tags=["dashboard"])
pages = APIRouter(prefix="/dashboard", include_in_schema=False)

LotIdPath = Annotated[str, Path(max_length=32, examples=["LOT0001"])]
WaferPath = Annotated[int, Path(ge=1, le=99, examples=[1])]
EcidPath = Annotated[str, Path(max_length=64, examples=["LOT0001-W01-X+001Y+000"])]
JobIdPath = Annotated[int, Path(ge=1, examples=[1])]


def _ok(example: Any, *, not_found: bool = True) -> dict[int | str, dict[str, Any]]:
    ok: dict[int | str, dict[str, Any]] = {200: {"content": {"application/json": {"example": example}}}}
    return {**ok, **NOT_FOUND} if not_found else ok


# ------------------------------------------------------------------------------------------- JSON
@router.get("/lots", responses=_ok(examples.LOTS_EXAMPLE, not_found=False))
def lots(session: SessionDep, _: ReadAccess, page: PageDep) -> reporting.LotList:
    """Lots, newest first, with die counts, yield (pass = soft bin 1-9) and their latest job."""
    return reporting.list_lots(session, limit=page.limit, offset=page.offset)


@router.get("/lots/{lot_id}", responses=_ok(examples.LOT_EXAMPLE))
def lot(lot_id: LotIdPath, session: SessionDep, _: ReadAccess) -> reporting.LotReport:
    """Bin pareto, accuracy before/after calibration, per-wafer trend with SPC limits."""
    return reporting.lot_report(session, lot_id)


@router.get("/lots/{lot_id}/wafers/{number}", responses=_ok(examples.WAFER_EXAMPLE))
def wafer(lot_id: LotIdPath, number: WaferPath, session: SessionDep, _: ReadAccess) -> reporting.WaferReport:
    """Every die of the wafer with its soft bin, colour and parametric values."""
    return reporting.wafer_report(session, lot_id, number)


@router.get("/dies/{ecid}", responses=_ok(examples.DIE_EXAMPLE))
def die(ecid: EcidPath, session: SessionDep, _: ReadAccess) -> reporting.DieReport:
    """A die: its signature (decoded per column when possible), weight images and functional tests."""
    return reporting.die_report(session, ecid)


@router.get("/jobs", responses=_ok(examples.JOBS_EXAMPLE, not_found=False))
def jobs(
    session: SessionDep, _: ReadAccess, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> list[reporting.JobSummary]:
    """The most recent jobs."""
    return reporting.recent_jobs(session, limit=limit)


@router.get("/jobs/{job_id}", responses=_ok(examples.JOB_EXAMPLE))
def job(job_id: JobIdPath, session: SessionDep, _: ReadAccess) -> reporting.JobReport:
    """A job's state and item progress (the job page polls this)."""
    return reporting.job_report(session, job_id)


# ------------------------------------------------------------------------------------------ pages
def _shell() -> HTMLResponse:
    return HTMLResponse(assets.shell_html(), headers={"Cache-Control": "no-cache"})


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
    return FileResponse(path, media_type=assets.media_type(name), headers={"Cache-Control": "max-age=3600"})

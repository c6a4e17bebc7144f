"""/v1/lots: register lots with their wafers' die maps; read lots and wafers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query
from fastapi.responses import JSONResponse

from app.api.deps import EngineerAccess, PageDep, ReadAccess, SessionDep, SettingsDep, UtcDatetime
from app.api.idempotency import IdempotencyDep
from app.api.schemas.common import CONFLICT, INT32_MAX, NOT_FOUND, Page
from app.api.schemas.lots import LOT_IN_EXAMPLES, LotIn, LotOut, WaferOut
from app.errors import InvalidInputError
from app.services import lots
from app.services.lots import WaferSpec

router = APIRouter(prefix="/lots", tags=["lots"])

LotIdPath = Annotated[str, Path(max_length=32, examples=["LOT0001"])]
MAX_PAGE_SITES = 20_000  # a wafer of the largest lot (max_lot_dies) in one response


@router.post("", status_code=201, response_model=LotOut, responses=CONFLICT)
def register_lot(
    body: Annotated[LotIn, Body(openapi_examples=LOT_IN_EXAMPLES)],
    session: SessionDep,
    principal: EngineerAccess,
    idem: IdempotencyDep,
    settings: SettingsDep,
) -> JSONResponse:
    """Register a lot: its product and each wafer's die map. One die (with its ECID) per site.

    At most 20,000 dies per lot (`CIMCAL_MAX_LOT_DIES`): 422 `too_many_dies` beyond."""
    wafers: list[WaferSpec] = []
    n_dies = 0
    for w in body.wafers:  # a wafer at a time: stop at the first one past the limit
        wafers.append(WaferSpec(w.number, w.site_list(), w.shape.model_dump() if w.shape else None))
        n_dies += len(wafers[-1].sites)
        if n_dies > settings.max_lot_dies:
            raise InvalidInputError(
                f"over {settings.max_lot_dies} dies (by wafer {w.number}); that is the most a lot may have",
                code="too_many_dies",
                details={"max": settings.max_lot_dies, "wafer": w.number},
            )

    def action() -> LotOut:
        lot = lots.register_lot(
            session, lot_id=body.lot_id, product=body.product, wafers=wafers, actor=principal.actor
        )
        return LotOut.of(lot)

    return idem.respond(body, action)


@router.get("")
def list_lots(
    session: SessionDep,
    _: ReadAccess,
    page: PageDep,
    product: Annotated[str | None, Query(max_length=64, examples=["KWS-BCIM-1"])] = None,
    created_after: Annotated[
        UtcDatetime | None, Query(description="Naive: UTC.", examples=["2026-01-01T00:00:00Z"])
    ] = None,
) -> Page[LotOut]:
    """Lots, newest first, optionally filtered by product and creation time (exclusive)."""
    items, total = lots.list_lots(
        session, product=product, created_after=created_after, limit=page.limit, offset=page.offset
    )
    return Page(items=[LotOut.of(lot) for lot in items], total=total, limit=page.limit, offset=page.offset)


@router.get("/{lot_id}", responses=NOT_FOUND)
def get_lot(lot_id: LotIdPath, session: SessionDep, _: ReadAccess) -> LotOut:
    return LotOut.of(lots.get_lot(session, lot_id))


@router.get("/{lot_id}/wafers/{number}", responses=NOT_FOUND)
def get_wafer(
    lot_id: LotIdPath,
    number: Annotated[int, Path(ge=1, le=99, examples=[1])],
    session: SessionDep,
    _: ReadAccess,
    sites_limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SITES, description="Sites of the die map in this response.")
    ] = MAX_PAGE_SITES,
    sites_offset: Annotated[int, Query(ge=0, le=INT32_MAX, description="Sites to skip.")] = 0,
) -> WaferOut:
    """One wafer with its die map, `sites_limit` sites from `sites_offset` (`n_sites` counts them all)."""
    wafer = WaferOut.model_validate(lots.get_wafer(session, lot_id, number))
    return wafer.model_copy(update={"sites": wafer.sites[sites_offset : sites_offset + sites_limit]})

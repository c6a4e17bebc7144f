"""/v1/lots: register lots with their wafers' die maps; read lots and wafers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Path, Query
from fastapi.responses import JSONResponse

from app.api.deps import EngineerAccess, PageDep, ReadAccess, SessionDep
from app.api.idempotency import IdempotencyDep
from app.api.schemas.common import CONFLICT, NOT_FOUND, Page
from app.api.schemas.lots import LOT_IN_EXAMPLES, LotIn, LotOut, WaferOut
from app.services import lots
from app.services.lots import WaferSpec

router = APIRouter(prefix="/lots", tags=["lots"])

LotIdPath = Annotated[str, Path(max_length=32, examples=["LOT0001"])]


@router.post("", status_code=201, response_model=LotOut, responses=CONFLICT)
def register_lot(
    body: Annotated[LotIn, Body(openapi_examples=LOT_IN_EXAMPLES)],
    session: SessionDep,
    principal: EngineerAccess,
    idem: IdempotencyDep,
) -> JSONResponse:
    """Register a lot: its product and each wafer's die map. One die (with its ECID) per site."""

    def action() -> LotOut:
        lot = lots.register_lot(
            session,
            lot_id=body.lot_id,
            product=body.product,
            wafers=[
                WaferSpec(w.number, w.site_list(), w.shape.model_dump() if w.shape else None)
                for w in body.wafers
            ],
            actor=principal.actor,
        )
        return LotOut.of(lot)

    return idem.respond(body, action)


@router.get("")
def list_lots(
    session: SessionDep,
    _: ReadAccess,
    page: PageDep,
    product: Annotated[str | None, Query(max_length=64, examples=["KWS-BCIM-1"])] = None,
    created_after: Annotated[datetime | None, Query(examples=["2026-01-01T00:00:00Z"])] = None,
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
) -> WaferOut:
    """One wafer with its full die map."""
    return WaferOut.model_validate(lots.get_wafer(session, lot_id, number))

"""/v1/dies: dies by ECID or by address."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.api.deps import PageDep, ReadAccess, SessionDep
from app.api.schemas.common import NOT_FOUND, Page
from app.api.schemas.dies import DieOut
from app.services import dies

router = APIRouter(prefix="/dies", tags=["dies"])


@router.get("")
def list_dies(
    session: SessionDep,
    _: ReadAccess,
    page: PageDep,
    lot: Annotated[str | None, Query(max_length=32, examples=["LOT0001"])] = None,
    wafer: Annotated[int | None, Query(ge=1, le=99, examples=[1])] = None,
    x: Annotated[int | None, Query(ge=-999, le=999, examples=[0])] = None,
    y: Annotated[int | None, Query(ge=-999, le=999, examples=[0])] = None,
) -> Page[DieOut]:
    """Dies in (lot, wafer, y, x) order; every filter is optional (all four find one die)."""
    views, total = dies.find_dies(
        session, lot_id=lot, wafer=wafer, x=x, y=y, limit=page.limit, offset=page.offset
    )
    return Page(items=[DieOut.of(v) for v in views], total=total, limit=page.limit, offset=page.offset)


@router.get("/{ecid}", responses=NOT_FOUND)
def get_die(
    ecid: Annotated[str, Path(max_length=64, examples=["LOT0001-W01-X+001Y+000"])],
    session: SessionDep,
    _: ReadAccess,
) -> DieOut:
    """One die by ECID: ``{lot}-W{wafer:02d}-X{x:+04d}Y{y:+04d}``."""
    return DieOut.of(dies.get_die(session, ecid))

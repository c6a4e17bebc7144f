"""HTTP routers. A new resource: write ``app/api/<resource>.py`` with ``router = APIRouter(prefix=...)``
and add it to :data:`V1_ROUTERS`.
"""

from __future__ import annotations

from fastapi import APIRouter

from app.api import chips, dashboard, datasets, dies, exports, jobs, keys, lots, models
from app.api.schemas.common import ERROR_RESPONSES

# chips first: its image GET is the hot path, and routes are matched in order.
V1_ROUTERS: tuple[APIRouter, ...] = (
    chips.router,
    lots.router,
    dies.router,
    models.router,
    datasets.router,
    keys.router,
    exports.router,
    dashboard.router,
    jobs.router,
)


def v1_router() -> APIRouter:
    """Every resource under ``/v1``; each operation documents the shared 401/403/422 error bodies."""
    v1 = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)
    for router in V1_ROUTERS:
        v1.include_router(router)
    return v1

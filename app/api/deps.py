"""Dependencies every router uses: the session (one unit of work per request), settings, the driver,
and the caller's identity checked against a role.

Use the ``Annotated`` aliases in endpoint signatures::

    def create_thing(body: ThingIn, session: SessionDep, principal: EngineerAccess) -> ThingOut: ...
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel

from app.api.schemas.common import INT32_MAX
from app.config import Settings
from app.db.session import Session, session_scope, sessionmaker
from app.db.tables import Role
from app.services import auth
from app.services.auth import Principal
from app.services.hardware import DriverPool
from app.services.images import ImageStore
from app.services.reporting.scope import MODEL_REF_PATTERN
from app.services.runtime import ModelRuntimes
from app.services.serving import ServingCache


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """Commit when the endpoint returns, roll back when it raises (before the response is sent).

    GET and HEAD requests read in a deferred transaction, so on SQLite they run in parallel instead
    of queueing on the write lock; a GET that must write does it through its own short unit of work.
    """
    read_only = request.method in ("GET", "HEAD")
    with session_scope(request.app.state.session_factory, read_only=read_only) as session:
        yield session


def get_drivers(request: Request) -> DriverPool:
    pool: DriverPool = request.app.state.drivers
    return pool


def get_runtimes(request: Request) -> ModelRuntimes:
    runtimes: ModelRuntimes = request.app.state.runtimes
    return runtimes


def get_image_store(request: Request) -> ImageStore:
    store: ImageStore = request.app.state.image_store
    return store


def get_session_factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
# scope="function": the commit happens before the response goes out, so a failed commit is a failure.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
DriversDep = Annotated[DriverPool, Depends(get_drivers)]
RuntimesDep = Annotated[ModelRuntimes, Depends(get_runtimes)]
ImageStoreDep = Annotated[ImageStore, Depends(get_image_store)]
# For use cases that hold the tester between short transactions (never a session across hardware I/O).
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")
_bearer = HTTPBearer(auto_error=False, description="The API key as a bearer token")


async def current_principal(
    request: Request,
    api_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from the process's cache of recently seen keys or else the database (in a thread).

    A revoked key is refused as soon as the revocation commits in any process sharing the image
    store, and within ``serving_cache_ttl_s`` otherwise (app/services/serving.py). The app state is
    read directly, not through dependencies: this runs on every request."""
    state = request.app.state
    settings: Settings = state.settings
    if not settings.auth_enabled:
        return auth.ANONYMOUS_ADMIN
    cache: ServingCache = state.serving_cache
    raw = api_key or (bearer.credentials if bearer else None)
    if raw:
        hit = cache.principal(raw)
        if hit is not None:
            return hit
    return await run_in_threadpool(
        cache.authenticate, state.session_factory, raw, settings.serving_cache_ttl_s
    )


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def require_roles(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency passing callers with one of ``roles`` (admin always passes); 401/403 otherwise."""
    allowed = frozenset(roles)

    async def dependency(principal: PrincipalDep) -> Principal:
        return auth.authorize(principal, allowed)

    return dependency


ReadAccess = Annotated[Principal, Depends(require_roles(Role.viewer, Role.station, Role.engineer))]
StationAccess = Annotated[Principal, Depends(require_roles(Role.station))]
EngineerAccess = Annotated[Principal, Depends(require_roles(Role.engineer))]
AdminAccess = Annotated[Principal, Depends(require_roles())]


def _as_utc(value: datetime) -> datetime:
    """A timestamp the database can compare: naive ones are UTC; out of range once in UTC is invalid."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as e:
        raise ValueError("the timestamp is out of range once converted to UTC") from e


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
"""A datetime query parameter: timezone-aware UTC (naive means UTC), 422 when it leaves the range."""


class PageParams(BaseModel):
    limit: int
    offset: int


def page_params(
    limit: Annotated[int, Query(ge=1, le=500, description="Page size.")] = 50,
    offset: Annotated[int, Query(ge=0, le=INT32_MAX, description="Items to skip.")] = 0,
) -> PageParams:
    return PageParams(limit=limit, offset=offset)


PageDep = Annotated[PageParams, Depends(page_params)]


ModelFilter = Annotated[
    str | None,
    Query(
        pattern=MODEL_REF_PATTERN,
        description="Report the results of this model only (name@version). Omitted: the only model "
        "tested on the lot; with several, the dashboard shows the most-tested one and the exports answer "
        "422 `model_required` (docs/exports.md).",
        examples=["kws-bnn@1"],
    ),
]

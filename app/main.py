"""The application factory: ``create_app()`` wires settings, database, driver, routers and the one
error format ``{"error": {"code", "message", "details"}}``. Serve it with ``cimcal serve``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api import dashboard, health, ratelimit, v1_router
from app.api.edge import EdgeGuard, error_response
from app.config import Settings, get_settings
from app.db import migrate
from app.db.session import Session, make_engine, make_session_factory, session_scope
from app.db.tables import Role
from app.errors import AppError, hardware_error_details, hardware_error_status
from app.jobs.base import JobRunner
from app.jobs.build import build_runner
from app.jobs.election import ElectedRunner, RunnerLock
from app.services import auth, datasets, models
from app.services.hardware import DriverPool
from app.services.images import ImageStore
from app.services.runtime import ModelRuntimes
from app.services.serving import ServingCache
from hardware.driver import HardwareError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


async def _app_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return error_response(exc.status_code, exc.code, exc.message, exc.details)


async def _hardware_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HardwareError)
    status = hardware_error_status(exc)
    log.warning("%s %s: hardware error %s: %s", request.method, request.url.path, exc.code, exc)
    return error_response(status, exc.code, str(exc), hardware_error_details(exc))


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # "input" and "ctx" may hold raw bytes or exception objects: keep what a client can act on.
    details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return error_response(422, "validation_error", "request validation failed", details)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s: database unavailable: %s", request.method, request.url.path, exc)
    return error_response(503, "database_unavailable", "the database is unavailable; retry later")


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s: unhandled error", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def _register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(HardwareError, _hardware_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(Exception, _unhandled)


def _prepare(settings: Settings, engine: Engine) -> sessionmaker[Session]:
    """Migrate, register the bootstrap key and the reference data; returns the session factory."""
    if settings.auto_migrate:
        migrate.upgrade(engine)
    factory = make_session_factory(engine)
    if settings.bootstrap_admin_key is not None:
        with session_scope(factory) as session:
            auth.ensure_key(
                session,
                raw_key=settings.bootstrap_admin_key.get_secret_value(),
                role=Role.admin,
                name="bootstrap",
            )
    with session_scope(factory) as session:
        # The station's own datasets (generated KWS clips, scikit-learn digits), then the reference
        # models that use them.
        datasets.ensure_builtin_datasets(session, settings)
        models.ensure_reference_models(session, settings)
    return factory


def prepare_database(settings: Settings) -> None:
    """What every server process does first, done once before several start (``cimcal serve
    --workers``), so that they do not race to create the same tables and rows."""
    engine = make_engine(settings.database_url)
    try:
        _prepare(settings, engine)
    finally:
        engine.dispose()


def _job_runner(
    settings: Settings,
    factory: sessionmaker[Session],
    pool: DriverPool,
    runtimes: ModelRuntimes,
    store: ImageStore,
) -> JobRunner:
    """The runner of this process: its own, or one elected among the server's processes."""
    elected = settings.runner_lock_file is not None
    runner = build_runner(
        settings, factory, pool=pool, runtimes=runtimes, store=store, resume_on_start=not elected
    )
    if settings.runner_lock_file is None:
        return runner
    return ElectedRunner(runner, RunnerLock(settings.runner_lock_file))


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine = make_engine(settings.database_url)
    factory = _prepare(settings, engine)
    # One driver per test site, lent to one request or batch worker at a time.
    pool = DriverPool.from_settings(settings)
    app.state.engine = engine
    app.state.session_factory = factory
    app.state.drivers = pool
    app.state.runtimes = ModelRuntimes(settings)
    app.state.image_store = ImageStore(settings.image_store_dir)
    app.state.serving_cache = ServingCache(app.state.image_store, max_bytes=settings.image_cache_bytes)
    # Batch jobs: the local runner resumes unfinished jobs here; the celery runner only sends.
    app.state.job_runner = _job_runner(settings, factory, pool, app.state.runtimes, app.state.image_store)
    app.state.job_runner.start()
    try:
        yield
    finally:
        app.state.job_runner.stop()
        pool.close()
        engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    # Swagger UI and ReDoc from the fastapi-offline wheel: a test floor has no CDN.
    app = FastAPIOffline(
        title="cimcal",
        version=health.VERSION,
        summary="Production-test station for computing-in-memory AI chips.",
        description=(
            "Characterize dies, compensate networks per die, functional-test and bin them.\n\n"
            "Authenticate with an API key in `X-API-Key` (or `Authorization: Bearer`). Roles: "
            "`viewer` reads; `station` characterizes, fetches images, runs functional tests; "
            "`engineer` manages models, lots and jobs; `admin` manages keys and may do everything.\n\n"
            'Every error has the body `{"error": {"code", "message", "details"}}`. '
            "POSTs accept an `Idempotency-Key` header; a replay of `POST /v1/keys` is 409 "
            "`idempotency_secret_not_replayable` (the key itself is never stored).\n\n"
            "Callers are rate-limited per API key (and per client address without one, and for failed "
            "authentications): 429 `rate_limited` with `Retry-After`. Request bodies are limited to "
            "1 MiB (uploads: their own limits); control characters are refused everywhere."
        ),
        lifespan=_lifespan,
    )
    app.state.settings = settings or get_settings()
    app.state.limiter = ratelimit.build_limiter(app)
    _register_error_handlers(app)
    # The last added runs first: rate limits answer before a body is read, the guard before any router.
    app.add_middleware(EdgeGuard)
    app.add_middleware(ratelimit.RateLimits)
    app.include_router(health.router)
    app.include_router(v1_router())
    app.include_router(dashboard.pages)
    return app

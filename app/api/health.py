"""Liveness, readiness and version; no authentication (load balancers and probes call them)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Request
from pydantic import BaseModel

from app.api.deps import DriversDep, SettingsDep
from app.api.schemas.common import error_response_doc, with_example
from app.errors import UnavailableError
from app.services.health import database_status

router = APIRouter(tags=["health"])

try:
    VERSION = version("cimcal")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0+unknown"


class Health(BaseModel):
    model_config = with_example({"status": "ok"})

    status: str


class Readiness(BaseModel):
    model_config = with_example({"status": "ready", "checks": {"database": "ok", "driver": "ok"}})

    status: str
    checks: dict[str, str]


class VersionInfo(BaseModel):
    model_config = with_example({"name": "cimcal", "version": "0.1.0", "api": "v1", "driver": "simulated"})

    name: str
    version: str
    api: str
    driver: str


@router.get("/healthz")
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get(
    "/readyz",
    responses={
        503: error_response_doc(
            "A dependency is not ready",
            "not_ready",
            "not ready: driver",
            {"database": "ok", "driver": "not_connected: tester offline"},
        )
    },
)
def readyz(request: Request, drivers: DriversDep) -> Readiness:
    """The database answers (and is migrated) and the tester driver connects."""
    checks = {
        "database": database_status(request.app.state.engine),
        "driver": drivers.status(),
    }
    failing = [name for name, status in checks.items() if status != "ok"]
    if failing:
        raise UnavailableError(f"not ready: {', '.join(failing)}", code="not_ready", details=checks)
    return Readiness(status="ready", checks=checks)


@router.get("/version")
def version_info(settings: SettingsDep) -> VersionInfo:
    return VersionInfo(name="cimcal", version=VERSION, api="v1", driver=settings.driver)

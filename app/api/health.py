"""Liveness, readiness and version; no authentication (load balancers and probes call them)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

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
    """The service and its test sites: driver, version, resource and options (secrets masked)."""

    model_config = with_example(
        {
            "name": "cimcal",
            "version": "0.1.0",
            "api": "v1",
            "driver": "mytester",
            "sites": [
                {
                    "driver": "mytester",
                    "driver_version": "1.2.0",
                    "site": 0,
                    "resource": "TCPIP0::10.0.0.5::INSTR",
                    "options": {"password": "**********", "timeout_s": 10.0},
                    "options_sha256": "9c1f0e5a7b3d2c4e6f8a0b1c3d5e7f9a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d9e",
                }
            ],
        }
    )

    name: str
    version: str
    api: str
    driver: str
    sites: list[dict[str, Any]]


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
def version_info(settings: SettingsDep, drivers: DriversDep) -> VersionInfo:
    return VersionInfo(
        name="cimcal", version=VERSION, api="v1", driver=settings.driver, sites=drivers.describe()
    )

"""Which tester measured a signature or ran a test."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

PROVENANCE_EXAMPLE = {
    "driver": "simulated",
    "driver_version": "0.1.0",
    "vendor": "cimcal",
    "model": "simulated fleet",
    "serial": "seed-2022",
    "site": 0,
    "resource": None,
    "options_sha256": "9c1f0e5a7b3d2c4e6f8a0b1c3d5e7f9a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d9e",
    "host": "station-01",
}


class ProvenanceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    driver: str = Field(description="The driver's registered name.")
    driver_version: str
    vendor: str = Field(description="As the tester reports it (Driver.info()).")
    model: str
    serial: str
    site: int = Field(description="The station's test-site index.")
    resource: str | None = Field(description="The tester's address, e.g. TCPIP0::10.0.0.5::INSTR.")
    options_sha256: str = Field(description="SHA-256 of the site's canonical driver options.")
    host: str = Field(description="The station host that drove the tester.")

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from hardware.driver import NotConnectedError
from tests.api.helpers import assert_error


def test_healthz_and_version(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    v = client.get("/version").json()
    assert v["name"] == "cimcal" and v["api"] == "v1" and v["driver"] == "simulated" and v["version"]
    # One entry per test site: its driver, resource and (secrets masked) options.
    assert [s["site"] for s in v["sites"]] == [0, 1]
    site = v["sites"][0]
    assert site["driver"] == "simulated" and site["driver_version"] and len(site["options_sha256"]) == 64
    assert site["options"]["fleet_seed"] == 2022 and site["resource"] is None


def test_readyz_checks_database_and_driver(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "driver": "ok"}}
    pool = client.app.state.drivers  # type: ignore[attr-defined]
    assert any(d.connected for d in pool.drivers)


def test_readyz_is_503_when_the_driver_cannot_connect(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = client.app.state.drivers  # type: ignore[attr-defined]

    def refuse() -> None:
        raise NotConnectedError("tester offline")

    for driver in pool.drivers:
        driver.close()
        monkeypatch.setattr(driver, "_connect", refuse)
    error = assert_error(client.get("/readyz"), 503, "not_ready")
    assert error["details"]["database"] == "ok"
    assert error["details"]["driver"].startswith("not_connected")

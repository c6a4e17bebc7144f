"""Every failure has the same body; hardware errors map to statuses in one place."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from hardware.driver import (
    ContactError,
    DieFault,
    HardwareError,
    HardwareTimeoutError,
    NotConnectedError,
    ProtocolError,
)
from tests.api.helpers import assert_error

HARDWARE_CASES = [
    (NotConnectedError("tester offline"), 503, "not_connected"),
    (HardwareTimeoutError("read_macro", 2.0), 504, "hardware_timeout"),
    (ProtocolError("bad frame", protocol_code=7), 502, "protocol_error"),
    (DieFault("die shorted"), 409, "die_fault"),
    (ContactError("contact lost"), 503, "contact_lost"),
    (HardwareError("something else"), 502, "hardware_error"),
]


@pytest.fixture
def failing_app(app: FastAPI) -> FastAPI:
    def hardware(i: int) -> None:
        raise HARDWARE_CASES[i][0]

    def crash() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    if not any(getattr(r, "path", "") == "/test/crash" for r in app.routes):  # the app is shared
        app.add_api_route("/test/hardware/{i}", hardware)
        app.add_api_route("/test/crash", crash)
    return app


@pytest.mark.parametrize("i", range(len(HARDWARE_CASES)), ids=[c[2] for c in HARDWARE_CASES])
def test_hardware_errors_map_to_statuses(failing_app: FastAPI, i: int) -> None:
    _, status, code = HARDWARE_CASES[i]
    error = assert_error(TestClient(failing_app).get(f"/test/hardware/{i}"), status, code)
    if code == "hardware_timeout":
        assert error["details"] == {"op": "read_macro", "timeout_s": 2.0}
    if code == "protocol_error":
        assert error["details"]["protocol_code"] == 7


def test_unhandled_errors_are_500_without_internals(failing_app: FastAPI) -> None:
    r = TestClient(failing_app, raise_server_exceptions=False).get("/test/crash")
    error = assert_error(r, 500, "internal_error")
    assert "secret" not in r.text and "Traceback" not in r.text and error["details"] is None


def test_unknown_route_and_method(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.put("/healthz"), 405, "method_not_allowed")

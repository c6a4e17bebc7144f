"""The HTTP edge on both databases: control characters, body limits, integer bounds, per-role caps,
pagination of what grows, offline docs and the dashboard's security headers."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.db.tables import Role
from tests.api.helpers import assert_error, lot_body, register

Headers = Callable[[Role | str], dict[str, str]]


# --------------------------------------------------------------------------- control characters
@pytest.mark.parametrize(
    "url",
    [
        "/v1/lots?product=KWS%00",
        "/v1/lots/LOT%000001",
        "/v1/dies?lot=LOT%01",
        "/v1/jobs?lot_id=%7F",
        "/v1/dies/LOT0001-W01-X%2B000Y%2B000%0A",
        "/v1/dashboard/lots?model=kws-bnn%401%00",
        "/v1/lots?%00=1",
    ],
)
def test_control_characters_in_the_url_are_422(client: TestClient, as_role: Headers, url: str) -> None:
    error = assert_error(client.get(url, headers=as_role(Role.viewer)), 422, "invalid_characters")
    assert error["details"][0]["loc"][0] in ("path", "query")


def test_control_characters_in_a_json_body_are_422_wherever_they_are(
    client: TestClient, as_role: Headers
) -> None:
    engineer = as_role(Role.engineer)
    cases = [
        ("/v1/lots", {**lot_body(), "product": "KWS\x00"}, ["body", "product"]),
        ("/v1/lots", {**lot_body(), "lot_id": "LOT1\n"}, ["body", "lot_id"]),
        ("/v1/keys", {"role": "viewer", "name": "tester\x00"}, ["body", "name"]),
        ("/v1/lots", {**lot_body(), "\x00": 1}, ["body", "\x00"]),
    ]
    for path, body, loc in cases:
        error = assert_error(
            client.post(path, json=body, headers=as_role(Role.admin)), 422, "invalid_characters"
        )
        assert error["details"][0]["loc"] == loc
    register(client, engineer)
    r = client.post(
        "/v1/dies/LOT0001-W01-X+000Y+000/functional-test",
        json={"model": "kws-bnn@1\x00"},
        headers=as_role(Role.station),
    )
    assert_error(r, 422, "invalid_characters")
    # Nothing was stored by the refused requests; the lot of the valid one is there.
    assert client.get("/v1/lots", headers=engineer).json()["total"] == 1


def test_a_json_body_that_is_not_utf8_is_422(client: TestClient, as_role: Headers) -> None:
    r = client.post(
        "/v1/lots",
        content=b'{"lot_id": "\xff"}',
        headers={**as_role(Role.engineer), "Content-Type": "application/json"},
    )
    assert_error(r, 422, "validation_error")


@pytest.mark.parametrize("depth", [50, 900, 990, 100_000])
def test_deeply_nested_json_is_422(client: TestClient, as_role: Headers, depth: int) -> None:
    headers = {**as_role(Role.engineer), "Content-Type": "application/json"}
    for body in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        assert_error(client.post("/v1/lots", content=body, headers=headers), 422, "validation_error")


def test_control_characters_in_upload_form_fields_are_422(client: TestClient, as_role: Headers) -> None:
    r = client.post(
        "/v1/models",
        files={"file": ("m.npz", b"not a model", "application/octet-stream")},
        data={"name": "m\x00", "version": "1"},
        headers=as_role(Role.engineer),
    )
    assert_error(r, 422, "invalid_characters")
    r = client.post(
        "/v1/models",
        files={"file": ("m.onnx", b"not onnx", "application/onnx")},
        data={"name": "m", "version": "1", "class_names": '[\n "a",\n "b\\u0000"\n]'},
        headers=as_role(Role.engineer),
    )
    error = assert_error(r, 422, "invalid_characters")
    assert error["details"][0]["loc"] == ["body", "class_names", 1]


def test_an_api_key_with_control_characters_is_401(client: TestClient) -> None:
    assert_error(
        client.get("/v1/lots", headers={"Authorization": "Bearer cim_\x01bad"}), 401, "unauthenticated"
    )


# ------------------------------------------------------------------------------------ body limits
@pytest.fixture
def small_bodies(app: FastAPI) -> Iterator[int]:
    app.state.settings = app.state.settings.model_copy(update={"max_body_bytes": 4096})
    yield 4096


def test_bodies_over_the_limit_are_413(client: TestClient, as_role: Headers, small_bodies: int) -> None:
    engineer = as_role(Role.engineer)
    big = lot_body(sites=[[x, y] for x in range(30) for y in range(30)])
    r = client.post("/v1/lots", json=big, headers=engineer)
    error = assert_error(r, 413, "payload_too_large")
    assert error["details"] == {"limit": small_bodies}

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused once the stream passes the limit
        yield b'{"lot_id": "LOT0001", "product": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'", "wafers": []}'

    r = client.post("/v1/lots", content=chunks(), headers={**engineer, "Content-Type": "application/json"})
    assert_error(r, 413, "payload_too_large")
    assert client.get("/v1/lots", headers=engineer).json()["total"] == 0
    assert client.post("/v1/lots", json=lot_body(), headers=engineer).status_code == 201


def test_uploads_keep_their_own_larger_limits(
    client: TestClient, as_role: Headers, small_bodies: int
) -> None:
    data = b"\x00" * (small_bodies * 4)  # over the JSON limit, under the model limit: parsed, not 413
    r = client.post(
        "/v1/models",
        content=data,
        params={"name": "m", "version": "1"},
        headers={**as_role(Role.engineer), "Content-Type": "application/octet-stream"},
    )
    assert_error(r, 422, "invalid_model")


# --------------------------------------------------------------------------------- integer bounds
def test_integers_beyond_the_database_range_are_422_and_ids_that_cannot_exist_404(
    client: TestClient, as_role: Headers
) -> None:
    viewer = as_role(Role.viewer)
    for url in (
        "/v1/lots?offset=9223372036854775808",
        "/v1/lots?offset=2147483648",
        "/v1/dies?offset=99999999999999999999999",
        "/v1/jobs/2147483648",
        "/v1/jobs/9223372036854775808",
        "/v1/dashboard/jobs/2147483648",
    ):
        assert_error(client.get(url, headers=viewer), 422, "validation_error")
    assert_error(client.get("/v1/jobs/2147483647", headers=viewer), 404, "not_found")
    assert_error(client.post("/v1/jobs/2147483647/cancel", headers=as_role(Role.engineer)), 404, "not_found")
    r = client.get("/v1/lots", params={"offset": 2147483647}, headers=viewer)
    assert r.status_code == 200 and r.json()["items"] == []


def test_timestamps_out_of_range_in_utc_are_422_and_naive_ones_utc(
    client: TestClient, as_role: Headers
) -> None:
    viewer = as_role(Role.viewer)
    for bad in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        r = client.get("/v1/lots", params={"created_after": bad}, headers=viewer)
        assert_error(r, 422, "validation_error")
    register(client, as_role(Role.engineer))
    for before, after in (
        ("2000-01-01T00:00:00", "9999-12-31T23:59:59"),
        ("0001-01-01T00:00:00Z", "9999-12-31T00:00:00Z"),
    ):
        assert client.get("/v1/lots", params={"created_after": before}, headers=viewer).json()["total"] == 1
        assert client.get("/v1/lots", params={"created_after": after}, headers=viewer).json()["total"] == 0


# ------------------------------------------------------------------------------------ role caps
def test_a_station_may_not_ask_for_more_than_its_budget(
    app: FastAPI, client: TestClient, as_role: Headers
) -> None:
    app.state.settings = app.state.settings.model_copy(update={"max_station_budget": 8192})
    register(client, as_role(Role.engineer))
    url = "/v1/dies/LOT0001-W01-X+000Y+000/characterize"
    error = assert_error(
        client.post(url, json={"budget": 8193}, headers=as_role(Role.station)), 422, "budget_over_limit"
    )
    assert error["details"] == {"budget": 8193, "max": 8192, "role": "station"}
    assert client.post(url, json={"budget": 8192}, headers=as_role(Role.station)).status_code == 201
    # An admin is held to the schema's maximum only.
    assert client.post(url, json={"budget": 9216}, headers=as_role(Role.admin)).status_code == 201


def test_a_lot_may_register_at_most_max_lot_dies(app: FastAPI, client: TestClient, as_role: Headers) -> None:
    app.state.settings = app.state.settings.model_copy(update={"max_lot_dies": 10})
    engineer = as_role(Role.engineer)
    body = lot_body(sites=[[x, 0] for x in range(6)])
    body["wafers"].append({"number": 2, "shape": {"kind": "rectangular", "columns": 5, "rows": 1}})
    error = assert_error(client.post("/v1/lots", json=body, headers=engineer), 422, "too_many_dies")
    assert error["details"] == {"max": 10, "wafer": 2}
    body["wafers"][1]["shape"]["columns"] = 4
    assert client.post("/v1/lots", json=body, headers=engineer).json()["n_dies"] == 10


# ------------------------------------------------------------------------------------ pagination
def test_wafer_die_maps_and_dashboard_wafers_are_paginated(client: TestClient, as_role: Headers) -> None:
    viewer = as_role(Role.viewer)
    register(client, as_role(Role.engineer), sites=[[x, y] for y in range(3) for x in range(4)])
    full = client.get("/v1/lots/LOT0001/wafers/1", headers=viewer).json()
    page = client.get(
        "/v1/lots/LOT0001/wafers/1", params={"sites_limit": 5, "sites_offset": 4}, headers=viewer
    ).json()
    assert page["n_sites"] == full["n_sites"] == 12 and page["sites"] == full["sites"][4:9]

    whole = client.get("/v1/dashboard/lots/LOT0001/wafers/1", headers=viewer).json()
    part = client.get(
        "/v1/dashboard/lots/LOT0001/wafers/1", params={"limit": 5, "offset": 10}, headers=viewer
    ).json()
    assert len(whole["dies"]) == 12 and part["dies"] == whole["dies"][10:]
    assert part["n_sites"] == 12 and part["legend"] == whole["legend"]
    assert_error(
        client.get("/v1/dashboard/lots/LOT0001/wafers/1", params={"limit": 20_001}, headers=viewer),
        422,
        "validation_error",
    )


def test_keys_are_paginated(client: TestClient, as_role: Headers) -> None:
    admin = as_role(Role.admin)
    first = client.get("/v1/keys", params={"limit": 2}, headers=admin).json()
    rest = client.get("/v1/keys", params={"limit": 50, "offset": 2}, headers=admin).json()
    assert first["total"] == rest["total"] == len(Role)
    assert len(first["items"]) == 2 and len(rest["items"]) == len(Role) - 2
    assert {k["prefix"] for k in first["items"]}.isdisjoint(k["prefix"] for k in rest["items"])


# ----------------------------------------------------------------------------- docs and dashboard
def test_the_docs_are_served_from_the_app_with_no_external_host(client: TestClient) -> None:
    for path in ("/docs", "/redoc"):
        page = client.get(path)
        assert page.status_code == 200
        refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""", page.text)
        urls = [a or b for a, b in refs]
        assert urls, path
        assert not [u for u in urls if u.startswith(("http:", "https:", "//"))], (path, urls)
        assert "cdn" not in page.text.lower() and "fonts.googleapis" not in page.text
        for url in urls:
            if url.startswith("/static-offline-docs/"):
                assert client.get(url).status_code == 200, url


def test_dashboard_pages_carry_security_headers(client: TestClient) -> None:
    for path in ("/dashboard", "/dashboard/lots/LOT0001", "/dashboard/static/dashboard.js"):
        r = client.get(path)
        assert r.status_code == 200, path
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-eval" not in csp and "script-src 'self' 'unsafe-inline'" not in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["Referrer-Policy"] == "no-referrer"
    # The shell has no inline script for the policy to block.
    shell = client.get("/dashboard").text
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", shell))

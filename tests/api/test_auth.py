"""401 without a valid key, 403 for a role that may not, per endpoint and role."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db.tables import Role
from tests.api.helpers import assert_error, lot_body

ALL = {Role.viewer, Role.station, Role.engineer, Role.admin}

# (method, path, request kwargs, roles allowed)
ENDPOINTS: list[tuple[str, str, dict[str, Any], set[Role]]] = [
    ("GET", "/v1/lots", {}, ALL),
    ("POST", "/v1/lots", {"json": lot_body()}, {Role.engineer, Role.admin}),
    ("GET", "/v1/lots/LOT0001", {}, ALL),
    ("GET", "/v1/lots/LOT0001/wafers/1", {}, ALL),
    ("GET", "/v1/dies", {}, ALL),
    ("GET", "/v1/dies/LOT0001-W01-X+000Y+000", {}, ALL),
    ("GET", "/v1/models", {}, ALL),
    ("GET", "/v1/models/kws@1", {}, ALL),
    (
        "POST",
        "/v1/models",
        {"files": {"file": ("m.npz", b"x")}, "data": {"name": "kws", "version": "1"}},
        {Role.engineer, Role.admin},
    ),
    ("GET", "/v1/keys", {}, {Role.admin}),
    ("POST", "/v1/keys", {"json": {"role": "viewer", "name": "n"}}, {Role.admin}),
    ("DELETE", "/v1/keys/cim_00000000", {}, {Role.admin}),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "allowed"), ENDPOINTS, ids=[f"{m} {p}" for m, p, *_ in ENDPOINTS]
)
def test_roles(
    client: TestClient,
    as_role: Callable[[Role], dict[str, str]],
    method: str,
    path: str,
    kwargs: dict[str, Any],
    allowed: set[Role],
) -> None:
    assert_error(client.request(method, path, **kwargs), 401, "unauthenticated")
    assert_error(
        client.request(method, path, headers={"X-API-Key": "cim_nothere_" + "x" * 40}, **kwargs),
        401,
        "unauthenticated",
    )
    for role in Role:
        r = client.request(method, path, headers=as_role(role), **kwargs)
        if role in allowed:
            assert r.status_code not in (401, 403), (role, r.text)
        else:
            error = assert_error(r, 403, "forbidden")
            assert error["details"]["role"] == role.value


def test_bearer_token_is_accepted(client: TestClient, as_role: Callable[[Role], dict[str, str]]) -> None:
    key = as_role(Role.viewer)["X-API-Key"]
    assert client.get("/v1/lots", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert_error(client.get("/v1/lots", headers={"Authorization": "Bearer nope"}), 401, "unauthenticated")


def test_revoked_key_is_refused(client: TestClient, as_role: Callable[[Role], dict[str, str]]) -> None:
    key = as_role(Role.station)["X-API-Key"]
    assert client.get("/v1/lots", headers={"X-API-Key": key}).status_code == 200
    assert client.delete(f"/v1/keys/{key[:12]}", headers=as_role(Role.admin)).status_code == 200
    assert_error(client.get("/v1/lots", headers={"X-API-Key": key}), 401, "api_key_revoked")


def test_health_endpoints_need_no_key(client: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/version"):
        assert client.get(path).status_code == 200


def test_auth_can_be_switched_off(client: TestClient) -> None:
    client.app.state.settings = client.app.state.settings.model_copy(update={"auth_enabled": False})  # type: ignore[attr-defined]
    assert client.post("/v1/lots", json=lot_body()).status_code == 201
    assert client.get("/v1/keys").status_code == 200

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.session import session_scope
from app.db.tables import ApiKey, AuditEvent, Role
from app.main import create_app
from tests.api.helpers import assert_error

Headers = Callable[[Role], dict[str, str]]


def test_create_use_list_and_revoke_a_key(
    client: TestClient, as_role: Headers, session_factory: sessionmaker[Session]
) -> None:
    admin = as_role(Role.admin)
    r = client.post("/v1/keys", json={"role": "station", "name": "tester-07"}, headers=admin)
    assert r.status_code == 201, r.text
    created = r.json()
    key, prefix = created["key"], created["prefix"]
    assert key.startswith(prefix) and created["role"] == "station" and created["revoked_at"] is None

    station = {"X-API-Key": key}
    assert client.get("/v1/dies", headers=station).status_code == 200
    assert_error(client.get("/v1/keys", headers=station), 403, "forbidden")

    listed = client.get("/v1/keys", headers=admin).json()["items"]
    assert {k["prefix"] for k in listed} == {prefix} | {
        k[:12] for k in (as_role(r)["X-API-Key"] for r in Role)
    }
    assert all("key" not in k for k in listed)

    revoked = client.delete(f"/v1/keys/{prefix}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert client.delete(f"/v1/keys/{prefix}", headers=admin).json() == revoked.json()  # harmless twice
    assert prefix not in {k["prefix"] for k in client.get("/v1/keys", headers=admin).json()["items"]}
    with_revoked = client.get("/v1/keys", params={"include_revoked": True}, headers=admin).json()["items"]
    assert prefix in {k["prefix"] for k in with_revoked}
    assert_error(client.get("/v1/dies", headers=station), 401, "api_key_revoked")

    with session_scope(session_factory) as s:
        row = s.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).one()
        assert key not in (row.key_sha256, row.prefix)
        actions = s.scalars(select(AuditEvent.action).where(AuditEvent.target == prefix)).all()
        assert sorted(actions) == ["api_key.create", "api_key.revoke"]


def test_key_errors(client: TestClient, as_role: Headers) -> None:
    admin = as_role(Role.admin)
    assert_error(client.delete("/v1/keys/cim_nothere", headers=admin), 404, "not_found")
    assert_error(
        client.post("/v1/keys", json={"role": "root", "name": "x"}, headers=admin), 422, "validation_error"
    )
    assert_error(
        client.post("/v1/keys", json={"role": "viewer", "name": ""}, headers=admin), 422, "validation_error"
    )


def test_bootstrap_admin_key_from_settings(settings: Settings) -> None:
    key = "cim_bootstrp_" + "b" * 40
    configured = settings.model_copy(update={"bootstrap_admin_key": SecretStr(key)})
    for _ in range(2):  # a restart with the same key is fine
        with TestClient(create_app(configured)) as client:
            r = client.post("/v1/keys", json={"role": "viewer", "name": "v"}, headers={"X-API-Key": key})
            assert r.status_code == 201, r.text

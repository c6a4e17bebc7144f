"""Idempotency-Key: a retried POST returns the first response and stores nothing twice."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.api.idempotency import REPLAYED_HEADER, Idempotency
from app.db.session import session_scope
from app.db.tables import AuditEvent, Die, IdempotencyRecord, Lot, Role
from app.services import idempotency as idempotency_service
from tests.api.helpers import assert_error, lot_body

Headers = Callable[[Role], dict[str, str]]


def _count(session_factory: sessionmaker[Session], table: type) -> int:
    with session_scope(session_factory) as s:
        return s.scalar(select(func.count()).select_from(table)) or 0


def test_a_retry_returns_the_first_response_and_stores_nothing_twice(
    client: TestClient, as_role: Headers, session_factory: sessionmaker[Session]
) -> None:
    headers = {**as_role(Role.engineer), "Idempotency-Key": "order-42"}
    first = client.post("/v1/lots", json=lot_body(), headers=headers)
    again = client.post("/v1/lots", json=lot_body(), headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert REPLAYED_HEADER not in first.headers and again.headers[REPLAYED_HEADER] == "true"
    assert _count(session_factory, Lot) == 1 and _count(session_factory, Die) == 4
    with session_scope(session_factory) as s:
        assert s.scalar(select(func.count()).where(AuditEvent.action == "lot.register")) == 1

    other_body = client.post("/v1/lots", json=lot_body(product="other"), headers=headers)
    assert_error(other_body, 422, "idempotency_key_reused")
    # Without the key the same body is a new request: the lot exists.
    assert_error(client.post("/v1/lots", json=lot_body(), headers=as_role(Role.engineer)), 409, "lot_exists")


def test_keys_are_scoped_to_the_caller(client: TestClient, as_role: Headers) -> None:
    a = client.post(
        "/v1/lots", json=lot_body("LOTA"), headers={**as_role(Role.engineer), "Idempotency-Key": "k"}
    )
    b = client.post(
        "/v1/lots", json=lot_body("LOTB"), headers={**as_role(Role.admin), "Idempotency-Key": "k"}
    )
    assert (a.status_code, b.status_code) == (201, 201)
    assert REPLAYED_HEADER not in b.headers


def test_a_failed_request_is_not_stored_and_may_be_retried(
    client: TestClient, as_role: Headers, session_factory: sessionmaker[Session]
) -> None:
    client.post("/v1/lots", json=lot_body(), headers=as_role(Role.engineer))
    headers = {**as_role(Role.engineer), "Idempotency-Key": "retry-me"}
    for _ in range(2):
        assert_error(client.post("/v1/lots", json=lot_body(), headers=headers), 409, "lot_exists")
    assert _count(session_factory, IdempotencyRecord) == 0


def test_bad_idempotency_keys_are_422(client: TestClient, as_role: Headers) -> None:
    for key in ("", "x" * 256, "has space"):
        r = client.post(
            "/v1/lots", json=lot_body(), headers={**as_role(Role.engineer), "Idempotency-Key": key}
        )
        assert_error(r, 422, "validation_error")


class Out(BaseModel):
    n: int


def test_concurrent_requests_with_one_key_run_the_action_once(session_factory: sessionmaker[Session]) -> None:
    calls = 0
    lock = threading.Lock()

    def action() -> Out:
        nonlocal calls
        with lock:
            calls += 1
            n = calls
        time.sleep(0.2)  # keep the first request in flight while the others arrive
        return Out(n=n)

    def request(_: int) -> tuple[int, dict[str, object], bool]:
        with session_scope(session_factory) as s:
            idem = Idempotency(s, owner="cim_tester01", key="same", method="POST", path="/v1/things")
            r = idem.respond({"x": 1}, action)
        return r.status_code, r.body, REPLAYED_HEADER.lower() in r.headers  # type: ignore[return-value]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(request, range(4)))
    assert calls == 1
    assert {(status, body) for status, body, _ in results} == {(201, b'{"n":1}')}
    assert sorted(replayed for *_, replayed in results) == [False, True, True, True]


def test_a_created_key_is_never_stored_nor_replayed(
    client: TestClient, as_role: Headers, session_factory: sessionmaker[Session]
) -> None:
    headers = {**as_role(Role.admin), "Idempotency-Key": "new-station-key"}
    body = {"role": "station", "name": "tester-07"}
    first = client.post("/v1/keys", json=body, headers=headers)
    assert first.status_code == 201
    created = first.json()
    with session_scope(session_factory) as s:
        (stored,) = s.scalars(select(IdempotencyRecord.response_body)).all()
    assert created["key"] not in str(stored) and stored == {k: v for k, v in created.items() if k != "key"}

    again = client.post("/v1/keys", json=body, headers=headers)
    error = assert_error(again, 409, "idempotency_secret_not_replayable")
    assert created["key"] not in again.text
    assert error["details"] == {"status_code": 201, "response": stored}
    # Still so once the key is revoked; the key created first is the only one.
    client.delete(f"/v1/keys/{created['prefix']}", headers=as_role(Role.admin))
    assert_error(
        client.post("/v1/keys", json=body, headers=headers), 409, "idempotency_secret_not_replayable"
    )
    listed = client.get("/v1/keys", params={"include_revoked": True}, headers=as_role(Role.admin)).json()
    assert [k["name"] for k in listed["items"]].count("tester-07") == 1


def _age_records(session_factory: sessionmaker[Session], seconds: float) -> None:
    with session_scope(session_factory) as s:
        for record in s.scalars(select(IdempotencyRecord)):
            record.created_at -= timedelta(seconds=seconds)


def test_records_expire_after_the_ttl(
    app: FastAPI, client: TestClient, as_role: Headers, session_factory: sessionmaker[Session]
) -> None:
    app.state.settings = app.state.settings.model_copy(update={"idempotency_ttl_s": 3600})
    headers = {**as_role(Role.engineer), "Idempotency-Key": "daily-lot"}
    assert client.post("/v1/lots", json=lot_body("LOTA"), headers=headers).status_code == 201
    _age_records(session_factory, 3599)
    assert client.post("/v1/lots", json=lot_body("LOTA"), headers=headers).headers[REPLAYED_HEADER] == "true"
    _age_records(session_factory, 2)
    # Expired: the key starts a new request, even with another body, and is stored afresh.
    r = client.post("/v1/lots", json=lot_body("LOTB"), headers=headers)
    assert r.status_code == 201 and REPLAYED_HEADER not in r.headers
    assert client.post("/v1/lots", json=lot_body("LOTB"), headers=headers).headers[REPLAYED_HEADER] == "true"
    assert _count(session_factory, IdempotencyRecord) == 1


def test_expired_records_are_purged(
    app: FastAPI,
    client: TestClient,
    as_role: Headers,
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app.state.settings = app.state.settings.model_copy(update={"idempotency_ttl_s": 60})
    for i in range(3):
        h = {**as_role(Role.engineer), "Idempotency-Key": f"k{i}"}
        assert client.post("/v1/lots", json=lot_body(f"LOT{i}"), headers=h).status_code == 201
    _age_records(session_factory, 61)
    monkeypatch.setattr(idempotency_service, "_last_purge", -float("inf"))
    h = {**as_role(Role.engineer), "Idempotency-Key": "fresh"}
    assert client.post("/v1/lots", json=lot_body("LOT9"), headers=h).status_code == 201
    with session_scope(session_factory) as s:
        assert s.scalars(select(IdempotencyRecord.key)).all() == ["fresh"]

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.session import session_scope
from app.db.tables import AuditEvent, Die
from tests.api.helpers import assert_error, lot_body, register

Headers = Callable[[str], dict[str, str]]


def test_register_lot_with_sites_and_read_it_back(
    client: TestClient, as_role: Headers, session_factory: sessionmaker[Session]
) -> None:
    created = register(client, as_role("engineer"))
    assert created["lot_id"] == "LOT0001" and created["n_dies"] == 4
    assert created["wafers"] == [{"number": 1, "n_sites": 4, "shape": None}]
    assert client.get("/v1/lots/LOT0001", headers=as_role("viewer")).json() == created
    wafer = client.get("/v1/lots/LOT0001/wafers/1", headers=as_role("viewer")).json()
    assert wafer["sites"] == [[0, 0], [1, 0], [0, 1], [1, 1]] and wafer["n_sites"] == 4
    with session_scope(session_factory) as s:
        assert s.scalar(select(func.count()).select_from(Die)) == 4
        audit = s.scalars(select(AuditEvent).where(AuditEvent.action == "lot.register")).one()
        assert audit.target == "LOT0001"
        assert audit.actor.startswith("test-engineer")


def test_register_lot_with_shape_descriptors(client: TestClient, as_role: Headers) -> None:
    body = {
        "lot_id": "LOT0002",
        "product": "KWS",
        "wafers": [
            {"number": 1, "shape": {"kind": "circular", "diameter": 6}},
            {"number": 2, "shape": {"kind": "rectangular", "columns": 3, "rows": 2}},
        ],
    }
    r = client.post("/v1/lots", json=body, headers=as_role("admin"))
    assert r.status_code == 201, r.text
    assert [(w["number"], w["n_sites"]) for w in r.json()["wafers"]] == [(1, 21), (2, 6)]
    wafer = client.get("/v1/lots/LOT0002/wafers/2", headers=as_role("viewer")).json()
    assert wafer["shape"] == {"kind": "rectangular", "columns": 3, "rows": 2}
    assert wafer["sites"] == [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (lot_body(lot_id="lot-1"), ["body", "lot_id"]),
        (lot_body(sites=[[0, 0], [0, 0]]), ["body", "wafers", 0]),
        (lot_body(sites=[[1000, 0]]), ["body", "wafers", 0, "sites", 0, 0]),
        (lot_body(sites=[]), ["body", "wafers", 0, "sites"]),
        (lot_body(sites=[[0, 0]], shape={"kind": "circular", "diameter": 5}), ["body", "wafers", 0]),
        (lot_body(shape={"kind": "hexagonal", "diameter": 5}), ["body", "wafers", 0, "shape"]),
        (
            lot_body(shape={"kind": "circular", "diameter": 0}),
            ["body", "wafers", 0, "shape", "circular", "diameter"],
        ),
        (
            lot_body(shape={"kind": "rectangular", "columns": 1000, "rows": 1000}),
            ["body", "wafers", 0, "shape"],
        ),
        ({"lot_id": "LOT1", "product": "P", "wafers": []}, ["body", "wafers"]),
        (
            {"lot_id": "LOT1", "product": "P", "wafers": [{"number": 1, "sites": [[0, 0]]}] * 2},
            ["body"],
        ),
        ({"lot_id": "LOT1", "product": "P", "wafers": [{"number": 100, "sites": [[0, 0]]}]}, None),
        ({"lot_id": "LOT1", "wafers": [{"number": 1, "sites": [[0, 0]]}]}, ["body", "product"]),
    ],
)
def test_invalid_lots_are_422_with_the_failing_field(
    client: TestClient, as_role: Headers, body: dict[str, object], loc: list[object] | None
) -> None:
    r = client.post("/v1/lots", json=body, headers=as_role("engineer"))
    error = assert_error(r, 422, "validation_error")
    locs = [d["loc"] for d in error["details"]]
    if loc is not None:
        assert any(found[: len(loc)] == loc for found in locs), locs
    assert client.get("/v1/lots", headers=as_role("viewer")).json()["total"] == 0


def test_malformed_json_is_422(client: TestClient, as_role: Headers) -> None:
    headers = {**as_role("engineer"), "Content-Type": "application/json"}
    assert_error(client.post("/v1/lots", content=b"{not json", headers=headers), 422, "validation_error")


def test_registering_a_lot_twice_is_409(client: TestClient, as_role: Headers) -> None:
    register(client, as_role("engineer"))
    r = client.post("/v1/lots", json=lot_body(product="other"), headers=as_role("engineer"))
    assert_error(r, 409, "lot_exists")


def test_unknown_lot_and_wafer_are_404(client: TestClient, as_role: Headers) -> None:
    assert_error(client.get("/v1/lots/NOPE", headers=as_role("viewer")), 404, "not_found")
    register(client, as_role("engineer"))
    error = assert_error(client.get("/v1/lots/LOT0001/wafers/2", headers=as_role("viewer")), 404, "not_found")
    assert "wafer 2" in error["message"]
    error = assert_error(client.get("/v1/lots/NOPE/wafers/1", headers=as_role("viewer")), 404, "not_found")
    assert "NOPE" in error["message"]
    assert_error(client.get("/v1/lots/LOT0001/wafers/0", headers=as_role("viewer")), 422, "validation_error")


def test_lot_listing_pages_and_filters(client: TestClient, as_role: Headers) -> None:
    for i in range(5):
        register(client, as_role("engineer"), lot_id=f"LOT{i}", product="A" if i % 2 == 0 else "B")
    viewer = as_role("viewer")
    first = client.get("/v1/lots", params={"limit": 2}, headers=viewer).json()
    assert (first["total"], first["limit"], first["offset"], len(first["items"])) == (5, 2, 0, 2)
    assert [lot["lot_id"] for lot in first["items"]] == ["LOT4", "LOT3"]  # newest first
    pages = [
        client.get("/v1/lots", params={"limit": 2, "offset": o}, headers=viewer).json()["items"]
        for o in (0, 2, 4)
    ]
    assert [lot["lot_id"] for page in pages for lot in page] == ["LOT4", "LOT3", "LOT2", "LOT1", "LOT0"]

    only_a = client.get("/v1/lots", params={"product": "A"}, headers=viewer).json()
    assert only_a["total"] == 3 and {lot["product"] for lot in only_a["items"]} == {"A"}

    third = pages[1][0]["created_at"]  # LOT2
    newer = client.get("/v1/lots", params={"created_after": third}, headers=viewer).json()
    assert [lot["lot_id"] for lot in newer["items"]] == ["LOT4", "LOT3"]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert client.get("/v1/lots", params={"created_after": future}, headers=viewer).json()["total"] == 0


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 501}, {"offset": -1}, {"created_after": "yesterday"}]
)
def test_bad_listing_parameters_are_422(
    client: TestClient, as_role: Headers, params: dict[str, object]
) -> None:
    assert_error(client.get("/v1/lots", params=params, headers=as_role("viewer")), 422, "validation_error")

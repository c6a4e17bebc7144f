"""Small builders shared by the API tests."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient


def lot_body(lot_id: str = "LOT0001", product: str = "KWS-BCIM-1", **wafer: Any) -> dict[str, Any]:
    w = wafer or {"sites": [[0, 0], [1, 0], [0, 1], [1, 1]]}
    return {"lot_id": lot_id, "product": product, "wafers": [{"number": 1, **w}]}


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The one error body: ``{"error": {"code", "message", "details"}}``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def register(client: TestClient, headers: dict[str, str], **kwargs: Any) -> dict[str, Any]:
    r = client.post("/v1/lots", json=lot_body(**kwargs), headers=headers)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]

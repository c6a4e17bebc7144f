from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.db.repositories import dies as die_repo
from app.db.session import session_scope
from app.services.signatures import record_signature
from tests.api.helpers import assert_error, register

Headers = Callable[[str], dict[str, str]]


def test_die_by_ecid_with_its_current_signature(
    client: TestClient, as_role: Headers, session_factory: sessionmaker[Session]
) -> None:
    register(client, as_role("engineer"))
    die = client.get("/v1/dies/LOT0001-W01-X+001Y+000", headers=as_role("station")).json()
    assert (die["lot_id"], die["wafer"], die["x"], die["y"]) == ("LOT0001", 1, 1, 0)
    assert die["current_signature"] is None

    with session_scope(session_factory) as s:
        row = die_repo.get_by_ecid(s, "LOT0001-W01-X+001Y+000")
        assert row is not None
        for blob in (b"v1", b"v2"):
            record_signature(
                s,
                die_id=row.id,
                blob=blob,
                reads=100,
                tester_s=0.5,
                n_dead_cols=0,
                n_stuck_cells=2,
                offset_spread_mac=0.8,
                actor="t",
            )
    sig = client.get("/v1/dies/LOT0001-W01-X+001Y+000", headers=as_role("viewer")).json()["current_signature"]
    assert (sig["version"], sig["n_stuck_cells"], len(sig["sha256"])) == (2, 2, 64)
    listed = client.get("/v1/dies", params={"x": 1, "y": 0}, headers=as_role("viewer")).json()["items"]
    assert listed[0]["current_signature"] == sig


def test_die_errors(client: TestClient, as_role: Headers) -> None:
    viewer = as_role("viewer")
    assert_error(client.get("/v1/dies/LOT0001-W01-X+009Y+009", headers=viewer), 404, "not_found")
    assert_error(client.get("/v1/dies/not-an-ecid", headers=viewer), 422, "invalid_ecid")


def test_die_listing_filters_and_pages(client: TestClient, as_role: Headers) -> None:
    engineer, viewer = as_role("engineer"), as_role("viewer")
    register(client, engineer, lot_id="LOTA")  # 4 dies
    register(
        client, engineer, lot_id="LOTB", shape={"kind": "rectangular", "columns": 3, "rows": 3}
    )  # 9 dies

    def ecids(**params: object) -> tuple[list[str], int]:
        body = client.get("/v1/dies", params=params, headers=viewer).json()
        return [d["ecid"] for d in body["items"]], body["total"]

    assert ecids()[1] == 13
    assert ecids(lot="LOTA") == (
        ["LOTA-W01-X+000Y+000", "LOTA-W01-X+001Y+000", "LOTA-W01-X+000Y+001", "LOTA-W01-X+001Y+001"],
        4,
    )
    assert ecids(lot="LOTB", wafer=1, x=2, y=1) == (["LOTB-W01-X+002Y+001"], 1)
    assert ecids(lot="LOTB", wafer=2) == ([], 0)
    assert ecids(lot="LOTB", limit=4, offset=8) == (["LOTB-W01-X+002Y+002"], 9)
    assert_error(client.get("/v1/dies", params={"x": 1000}, headers=viewer), 422, "validation_error")

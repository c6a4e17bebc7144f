"""Per-model exports and dashboards over HTTP, end to end: the same dies characterized once, then
functionally tested through the API with two models (the trained reference model under another name,
which passes, and an untrained one, which fails); every file and view of one model holds that model's
results from the database, and nothing of the other's."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.session import session_scope
from app.db.tables import Die, Model, TestResult
from app.exports import e142
from hardware.driver import DieAddress
from tests.api.helpers import assert_error, register
from tests.api.models_util import reference_model_as, tiny_kws_model
from tests.exports.pystdf_reader import of_type, read_stdf

Headers = Callable[[str], dict[str, str]]
GOOD, BAD = "kws-good@1", "kws-tiny@1"
DIE_A, DIE_B = "LOT0001-W01-X+000Y+000", "LOT0001-W01-X+001Y+000"


def _upload(client: TestClient, headers: dict[str, str], ref: str, data: bytes) -> None:
    name, version = ref.split("@")
    r = client.post(
        "/v1/models",
        files={"file": (f"{name}.npz", data, "application/octet-stream")},
        data={"name": name, "version": version},
        headers=headers,
    )
    assert r.status_code == 201, r.text


def _final_bins(factory: sessionmaker[Session], ref: str) -> dict[str, tuple[int, int]]:
    """ECID -> (soft, hard) of each die's latest calibrated test with the model, from the database."""
    name, version = ref.split("@")
    with session_scope(factory) as s:
        rows = s.execute(
            select(Die.ecid, TestResult.soft_bin, TestResult.hard_bin)
            .join(TestResult, TestResult.die_id == Die.id)
            .join(Model, Model.id == TestResult.model_id)
            .where(Model.name == name, Model.version == version, TestResult.image_id.is_not(None))
            .order_by(TestResult.created_at, TestResult.id)
        ).all()
    return {ecid: (soft, hard) for ecid, soft, hard in rows}


@pytest.fixture
def tested(client: TestClient, as_role: Headers) -> None:
    register(client, as_role("engineer"))
    _upload(client, as_role("engineer"), GOOD, reference_model_as(*GOOD.split("@")))
    _upload(client, as_role("engineer"), BAD, tiny_kws_model(*BAD.split("@")))
    station = as_role("station")
    for ecid in (DIE_A, DIE_B):
        r = client.post(f"/v1/dies/{ecid}/characterize", json={"budget": 8192}, headers=station)
        assert r.status_code == 201, r.text
    for ecid, ref in ((DIE_A, GOOD), (DIE_A, BAD), (DIE_B, BAD)):
        r = client.post(f"/v1/dies/{ecid}/functional-test", json={"model": ref}, headers=station)
        assert r.status_code == 201, r.text


def test_each_model_has_its_own_results(
    client: TestClient, as_role: Headers, session_factory: sessionmaker[Session], tested: None
) -> None:
    viewer = as_role("viewer")
    expected = {ref: _final_bins(session_factory, ref) for ref in (GOOD, BAD)}
    assert set(expected[GOOD]) == {DIE_A} and set(expected[BAD]) == {DIE_A, DIE_B}
    # The trained model passes the die, the untrained one fails it: different bins on the same die.
    assert 1 <= expected[GOOD][DIE_A][0] <= 9 and expected[BAD][DIE_A][0] >= 10

    for ref, bins in expected.items():
        records = read_stdf(
            client.get("/v1/lots/LOT0001/stdf", params={"model": ref}, headers=viewer).content
        )
        (mir,) = of_type(records, "MIR")
        assert f"{mir['JOB_NAM']}@{mir['JOB_REV']}" == ref
        parts = {p["PART_ID"]: (p["SOFT_BIN"], p["HARD_BIN"], p["PART_TXT"]) for p in of_type(records, "PRR")}
        assert parts == {ecid: (*b, ref) for ecid, b in bins.items()}

        r = client.get("/v1/lots/LOT0001/dies.csv", params={"model": ref}, headers=viewer)
        rows = {row["ecid"]: row for row in csv.DictReader(io.StringIO(r.text))}
        assert {row["model"] for row in rows.values()} == {ref}
        tested_rows = {
            e: (int(row["soft_bin"]), int(row["hard_bin"])) for e, row in rows.items() if row["soft_bin"]
        }
        assert tested_rows == bins

        r = client.get("/v1/lots/LOT0001/wafers/1/e142", params={"model": ref}, headers=viewer)
        on_map = {xy: b for xy, b in e142.read_e142(r.content).bins.items() if b is not None}
        sites = {e: DieAddress.from_ecid(e) for e in bins}
        assert on_map == {(sites[e].x, sites[e].y): b[0] for e, b in bins.items()}

        wafer = client.get(
            "/v1/dashboard/lots/LOT0001/wafers/1", params={"model": ref}, headers=viewer
        ).json()
        assert {d["ecid"]: d["soft_bin"] for d in wafer["dies"] if d["soft_bin"] is not None} == {
            e: b[0] for e, b in bins.items()
        }

    # Die A: its report with each model shows that model's final bins; every test of both is listed.
    for ref, bins in expected.items():
        die = client.get(f"/v1/dashboard/dies/{DIE_A}", params={"model": ref}, headers=viewer).json()
        assert (die["model"], die["final"]["soft_bin"]) == (ref, bins[DIE_A][0])
        assert sorted(die["models"]) == sorted(expected)
        assert len(die["tests"]) == 4  # before and after, per model


def test_defaults_with_two_models(client: TestClient, as_role: Headers, tested: None) -> None:
    viewer = as_role("viewer")
    lot = client.get("/v1/dashboard/lots/LOT0001", headers=viewer).json()
    assert lot["model"] == BAD  # two dies against one: the most-tested model
    assert [(m["model"], m["n_tested"]) for m in lot["models"]] == [(BAD, 2), (GOOD, 1)]
    for path in ("stdf", "dies.csv", "dies.parquet", "wafers/1/e142"):
        error = assert_error(client.get(f"/v1/lots/LOT0001/{path}", headers=viewer), 422, "model_required")
        assert [m["model"] for m in error["details"]["models"]] == [BAD, GOOD]
    assert_error(
        client.get("/v1/lots/LOT0001/stdf", params={"model": "kws-good@2"}, headers=viewer), 404, "not_found"
    )

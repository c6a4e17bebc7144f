"""Per-die CSV and Parquet: one row per die, the database's values, missing steps as empty cells / nulls."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.db.session import session_scope
from app.exports import tables
from tests.dashboard.demo import DemoLot, DieExpect, build_demo_lot


@pytest.fixture
def demo(session_factory: sessionmaker[Session]) -> DemoLot:
    with session_scope(session_factory) as s:
        return build_demo_lot(s, n_wafers=2, diameter=6)


def _check_row(row: dict[str, object], d: DieExpect, model: str) -> None:
    assert (row["wafer"], row["x"], row["y"], row["model"]) == (d.wafer, d.x, d.y, model)
    assert row["soft_bin"] == d.soft_bin and row["hard_bin"] == d.hard_bin
    assert row["accuracy_before"] == d.accuracy_before and row["accuracy_after"] == d.accuracy_after
    assert row["n_dead_cols"] == d.n_dead_cols and row["n_stuck_cells"] == d.n_stuck_cells
    assert row["offset_spread_mac"] == d.offset_spread_mac and row["tester_s"] == d.tester_s
    # An alarm (bin 0) is "retest", not a verdict: no pass/fail, and nothing measured is never 0.0.
    assert row["passed"] == (None if d.soft_bin in (None, 0) else 1 <= d.soft_bin <= 9)
    assert row["site"] == d.site and row["retries"] == d.retries
    assert row["test_time_s"] == d.test_time_s
    assert (row["first_pass"], row["n_tests"], row["n_alarms"]) == (d.first_pass, d.n_tests, d.n_alarms)
    assert row["alarm_code"] == d.alarm_code
    assert (row["reason"] is not None) == (d.soft_bin == 0)


def _parse(column: str, text: str) -> object:
    if text == "":
        return None
    if column in ("passed", "first_pass"):
        return text == "True"
    if column in (
        "wafer",
        "x",
        "y",
        "soft_bin",
        "hard_bin",
        "n_dead_cols",
        "n_stuck_cells",
        "reads",
        "site",
        "retries",
        "n_tests",
        "n_alarms",
    ):
        return int(text)
    if column in ("accuracy_before", "accuracy_after", "offset_spread_mac", "tester_s", "test_time_s"):
        return float(text)  # written with repr: reads back to the same float
    return text


def _check_csv(text: str, demo: DemoLot) -> None:
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == tables.COLUMNS
    assert len(rows) == len(demo.dies)
    for row in rows:
        typed = {c: _parse(c, v) for c, v in row.items()}
        _check_row(typed, demo.dies[row["ecid"]], demo.model)


def test_csv(client: TestClient, as_role: Callable[[str], dict[str, str]], demo: DemoLot) -> None:
    r = client.get("/v1/lots/DEMO001/dies.csv", headers=as_role("viewer"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert 'filename="DEMO001-dies_kws-bnn_1.0.0.csv"' in r.headers["content-disposition"]
    assert r.text.startswith("lot_id,wafer,x,y,ecid,model,soft_bin,")
    _check_csv(r.text, demo)
    (alarm,) = demo.alarmed
    row = next(row for row in csv.DictReader(io.StringIO(r.text)) if row["ecid"] == alarm.ecid)
    assert (
        row["soft_bin"],
        row["passed"],
        row["accuracy_before"],
        row["accuracy_after"],
        row["test_time_s"],
    ) == (
        "0",
        "",
        "",
        "",
        "",
    )


def test_parquet(client: TestClient, as_role: Callable[[str], dict[str, str]], demo: DemoLot) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    r = client.get("/v1/lots/DEMO001/dies.parquet", headers=as_role("viewer"))
    assert r.status_code == 200
    assert r.content[:4] == b"PAR1"
    table = pq.read_table(io.BytesIO(r.content))
    assert tuple(table.column_names) == tables.COLUMNS
    assert str(table.schema.field("soft_bin").type) == "int64"
    assert str(table.schema.field("tested_at").type) == "timestamp[us, tz=UTC]"
    rows = table.to_pylist()
    assert len(rows) == len(demo.dies)
    for row in rows:
        _check_row(row, demo.dies[row["ecid"]], demo.model)


def test_each_model_has_its_own_table(
    client: TestClient, as_role: Callable[[str], dict[str, str]], two_models: tuple[DemoLot, DemoLot]
) -> None:
    for demo in two_models:
        r = client.get("/v1/lots/DEMO001/dies.csv", params={"model": demo.model}, headers=as_role("viewer"))
        assert r.status_code == 200, r.text
        _check_csv(r.text, demo)
    r = client.get("/v1/lots/DEMO001/dies.csv", headers=as_role("viewer"))
    assert (r.status_code, r.json()["error"]["code"]) == (422, "model_required")

    pq = pytest.importorskip("pyarrow.parquet")
    second = two_models[1]
    r = client.get("/v1/lots/DEMO001/dies.parquet", params={"model": second.model}, headers=as_role("viewer"))
    assert r.status_code == 200, r.text
    rows = pq.read_table(io.BytesIO(r.content)).to_pylist()
    assert len(rows) == len(second.dies)
    for row in rows:
        _check_row(row, second.dies[row["ecid"]], second.model)
    r = client.get("/v1/lots/DEMO001/dies.parquet", headers=as_role("viewer"))
    assert (r.status_code, r.json()["error"]["code"]) == (422, "model_required")

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


def _check_row(row: dict[str, object], d: DieExpect) -> None:
    assert (row["wafer"], row["x"], row["y"]) == (d.wafer, d.x, d.y)
    assert row["soft_bin"] == d.soft_bin and row["hard_bin"] == d.hard_bin
    assert row["accuracy_before"] == d.accuracy_before and row["accuracy_after"] == d.accuracy_after
    assert row["n_dead_cols"] == d.n_dead_cols and row["n_stuck_cells"] == d.n_stuck_cells
    assert row["offset_spread_mac"] == d.offset_spread_mac and row["tester_s"] == d.tester_s
    assert row["passed"] == (None if d.soft_bin is None else 1 <= d.soft_bin <= 9)


def test_csv(client: TestClient, as_role: Callable[[str], dict[str, str]], demo: DemoLot) -> None:
    r = client.get("/v1/lots/DEMO001/dies.csv", headers=as_role("viewer"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert tuple(rows[0]) == tables.COLUMNS
    assert len(rows) == len(demo.dies)

    def parse(column: str, text: str) -> object:
        if text == "":
            return None
        if column == "passed":
            return text == "True"
        if column in ("wafer", "x", "y", "soft_bin", "hard_bin", "n_dead_cols", "n_stuck_cells", "reads"):
            return int(text)
        if column in ("accuracy_before", "accuracy_after", "offset_spread_mac", "tester_s", "test_time_s"):
            return float(text)  # written with repr: reads back to the same float
        return text

    for row in rows:
        typed = {c: parse(c, v) for c, v in row.items()}
        _check_row(typed, demo.dies[row["ecid"]])


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
        _check_row(row, demo.dies[row["ecid"]])

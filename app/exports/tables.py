"""Per-die tables: CSV (always) and Parquet (when pyarrow is installed)."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any, get_args, get_type_hints

from app.exports.records import DieRow

COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DieRow))


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, float):
        return repr(v)  # shortest text that reads back to the same float
    return v


def write_csv(rows: Sequence[DieRow]) -> bytes:
    """UTF-8 CSV with a header row; empty cells for missing values, ISO 8601 times."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([_csv_value(getattr(r, c)) for c in COLUMNS])
    return buf.getvalue().encode()


def parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _arrow_type(annotation: Any) -> Any:
    """The Arrow type of a ``DieRow`` field annotation (``int | None`` -> int64, ...)."""
    import pyarrow as pa

    base = next((a for a in get_args(annotation) if a is not type(None)), annotation)
    types = {
        bool: pa.bool_(),
        int: pa.int64(),
        float: pa.float64(),
        str: pa.string(),
        datetime: pa.timestamp("us", tz="UTC"),
    }
    return types[base]


def write_parquet(rows: Sequence[DieRow]) -> bytes:
    """The same table as :func:`write_csv` as Parquet, with typed (nullable) columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    hints = get_type_hints(DieRow)
    schema = pa.schema([pa.field(c, _arrow_type(hints[c])) for c in COLUMNS])
    table = pa.table({c: [getattr(r, c) for r in rows] for c in COLUMNS}, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()

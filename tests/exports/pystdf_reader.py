"""Read STDF with pystdf, the independent reader: ``[(record name, {field: value}), ...]`` in file order."""

from __future__ import annotations

import io
from typing import Any

from pystdf.IO import Parser


class _Collect:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def after_send(self, _source: Any, data: tuple[Any, list[Any]]) -> None:
        rec_type, fields = data
        self.records.append(
            (type(rec_type).__name__.upper(), dict(zip(rec_type.fieldNames, fields, strict=True)))
        )


def read_stdf(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    sink = _Collect()
    parser = Parser(inp=io.BytesIO(data))
    parser.addSink(sink)
    parser.parse()
    return sink.records


def of_type(records: list[tuple[str, dict[str, Any]]], name: str) -> list[dict[str, Any]]:
    return [fields for rec, fields in records if rec == name]

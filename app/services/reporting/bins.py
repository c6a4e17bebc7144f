"""Soft bins: which pass, their names and colours, and bin paretos."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from app.exports.records import ALARM_BIN, BinInfo, DieRow

PASS_BINS = (1, 9)

UNTESTED_COLOR = "#d0d0d0"
_PASS_COLORS = (
    "#1a9850",
    "#66bd63",
    "#a6d96a",
    "#d9ef8b",
    "#74c476",
    "#31a354",
    "#006837",
    "#b8e186",
    "#7fbc41",
)
_FAIL_COLORS = (
    "#d73027",
    "#f46d43",
    "#fdae61",
    "#c51b7d",
    "#762a83",
    "#4575b4",
    "#e08214",
    "#8c510a",
    "#01665e",
    "#de77ae",
)


def is_pass(soft_bin: int) -> bool:
    return PASS_BINS[0] <= soft_bin <= PASS_BINS[1]


def soft_bin_color(soft_bin: int | None) -> str:
    """The colour of a soft bin on every map and chart (``None``: tested not yet)."""
    if soft_bin is None:
        return UNTESTED_COLOR
    if soft_bin == ALARM_BIN:
        return "#000000"
    if is_pass(soft_bin):
        return _PASS_COLORS[soft_bin - PASS_BINS[0]]
    return _FAIL_COLORS[(soft_bin - PASS_BINS[1] - 1) % len(_FAIL_COLORS)]


def bin_info(soft_bin: int) -> BinInfo:
    if soft_bin == ALARM_BIN:
        return BinInfo(soft_bin, "tester alarm (retest)", False)
    if is_pass(soft_bin):
        return BinInfo(soft_bin, f"pass grade {soft_bin}", True)
    return BinInfo(soft_bin, f"fail bin {soft_bin}", False)


@dataclass(frozen=True)
class BinCount:
    soft_bin: int | None
    name: str
    passed: bool
    count: int
    color: str


def pareto(rows: Iterable[DieRow]) -> list[BinCount]:
    """Soft-bin counts of the dies with a result (a verdict, or only alarms: bin 0), most frequent
    first (ties: lower bin first)."""
    counts = Counter(r.soft_bin for r in rows if r.soft_bin is not None)
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [BinCount(b, bin_info(b).name, is_pass(b), n, soft_bin_color(b)) for b, n in ordered]

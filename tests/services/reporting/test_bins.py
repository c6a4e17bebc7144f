"""Soft-bin colours: distinct pass greens, black alarms, grey untested."""

from __future__ import annotations

from app.services.reporting.bins import UNTESTED_COLOR, soft_bin_color


def test_bin_colours() -> None:
    passes = {soft_bin_color(b) for b in range(1, 10)}
    assert len(passes) == 9
    assert soft_bin_color(0) == "#000000"
    assert soft_bin_color(None) == UNTESTED_COLOR
    assert soft_bin_color(11) not in passes
    assert soft_bin_color(11) != soft_bin_color(12)

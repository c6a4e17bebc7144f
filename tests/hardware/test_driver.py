from __future__ import annotations

import pytest

from hardware.driver import DieAddress


@pytest.mark.parametrize(
    ("lot", "w", "x", "y"), [("LOT0001", 3, 12, -4), ("A", 99, -999, 999), ("L.1_2", 1, 0, 0)]
)
def test_ecid_round_trip(lot: str, w: int, x: int, y: int) -> None:
    a = DieAddress(lot, w, x, y)
    assert DieAddress.from_ecid(a.ecid) == a


def test_ecid_format() -> None:
    assert DieAddress("LOT0001", 3, 12, -4).ecid == "LOT0001-W03-X+012Y-004"


@pytest.mark.parametrize(
    "bad", ["", "lot-W01-X+000Y+000", "LOT1-W1-X+000Y+000", "LOT1-W01-X000Y+000", "LOT1-W01-X+000Y+000-"]
)
def test_malformed_ecid_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        DieAddress.from_ecid(bad)


@pytest.mark.parametrize(
    ("lot", "w", "x", "y"), [("lot1", 1, 0, 0), ("L", 0, 0, 0), ("L", 100, 0, 0), ("L", 1, 1000, 0)]
)
def test_invalid_address_is_rejected(lot: str, w: int, x: int, y: int) -> None:
    with pytest.raises(ValueError):
        DieAddress(lot, w, x, y)

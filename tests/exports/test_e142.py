"""SEMI E142 wafer maps: the document states its frame, parses, and round-trips the bin map."""

from __future__ import annotations

from collections.abc import Callable
from xml.etree import ElementTree as ET

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.db.session import session_scope
from app.exports import e142
from app.exports.records import BinInfo, WaferBinMap
from tests.dashboard.demo import DemoLot, build_demo_lot

NS = {"e": e142.NAMESPACE}


def _map(bins: dict[tuple[int, int], int | None]) -> WaferBinMap:
    info = {b: BinInfo(b, f"bin {b}", 1 <= b <= 9) for b in bins.values() if b is not None}
    return WaferBinMap(lot_id="L1", wafer_number=7, substrate_id="L1-W07", bins=bins, bin_info=info)


def test_round_trip_keeps_coordinates_bins_and_untested_dies() -> None:
    bins: dict[tuple[int, int], int | None] = {(-2, -1): 1, (0, -1): 11, (1, 0): None, (-1, 2): 0, (3, 2): 2}
    back = e142.read_e142(e142.write_e142(_map(bins)))
    assert dict(back.bins) == bins
    assert (back.lot_id, back.wafer_number, back.substrate_id) == ("L1", 7, "L1-W07")
    assert {b: i.passed for b, i in back.bin_info.items()} == {0: False, 1: True, 2: True, 11: False}


def test_wide_bins_use_four_digit_codes() -> None:
    bins: dict[tuple[int, int], int | None] = {(0, 0): 1, (1, 0): 300, (0, 1): None}
    xml = e142.write_e142(_map(bins))
    bcm = ET.fromstring(xml).find(".//e:BinCodeMap", NS)
    assert bcm is not None and bcm.get("NullBin") == "FFFF"
    assert dict(e142.read_e142(xml).bins) == bins


def test_the_frame_is_stated_explicitly() -> None:
    root = ET.fromstring(e142.write_e142(_map({(0, 0): 1, (2, 1): 11})))
    assert root.tag == f"{{{e142.NAMESPACE}}}MapData"
    smap = root.find("e:SubstrateMaps/e:SubstrateMap", NS)
    assert smap is not None
    assert smap.get("OriginLocation") == "UpperLeft"
    assert smap.get("AxisDirection") == "DownRight"
    assert smap.get("Orientation") == "0"
    dim = root.find("e:Layouts/e:Layout[@LayoutId='Devices']/e:Dimension", NS)
    assert dim is not None and (dim.get("X"), dim.get("Y")) == ("3", "2")
    rows = [r.text for r in root.findall(".//e:BinCode", NS)]
    # Row 0 is the top row (y = 0); the first code of a row is the leftmost die (x = 0).
    assert rows == ["01FFFF", "FFFF0B"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x: x.replace(b'OriginLocation="UpperLeft"', b'OriginLocation="LowerLeft"'), "frame"),
        (lambda x: x.replace(b'BinType="HexaDecimal"', b'BinType="Decimal"'), "BinType"),
        (lambda x: x.replace(b"urn:semi-org:xsd.E142-1.V1005.SubstrateMap", b"urn:other"), "root element"),
        (lambda x: x[:40], "not XML"),
        (lambda x: x.replace(b"<BinCode>01FFFF</BinCode>", b"<BinCode>01FFF</BinCode>"), "multiple"),
    ],
)
def test_the_reader_refuses_what_it_cannot_read(change: Callable[[bytes], bytes], message: str) -> None:
    xml = e142.write_e142(_map({(0, 0): 1, (2, 1): 11}))
    with pytest.raises(e142.E142Error, match=message):
        e142.read_e142(change(xml))


def test_an_empty_wafer_is_refused() -> None:
    with pytest.raises(e142.E142Error, match="no die sites"):
        e142.write_e142(_map({}))


@pytest.fixture
def demo(session_factory: sessionmaker[Session]) -> DemoLot:
    with session_scope(session_factory) as s:
        return build_demo_lot(s)


@pytest.mark.parametrize("wafer", [1, 3])
def test_wafer_export_round_trips_the_database_bin_map(
    client: TestClient, as_role: Callable[[str], dict[str, str]], demo: DemoLot, wafer: int
) -> None:
    r = client.get(f"/v1/lots/DEMO001/wafers/{wafer}/e142", headers=as_role("viewer"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/xml")
    assert f'filename="DEMO001-W{wafer:02d}_kws-bnn_1.0.0.e142.xml"' in r.headers["content-disposition"]
    back = e142.read_e142(r.content)
    assert dict(back.bins) == {(d.x, d.y): d.soft_bin for d in demo.on_wafer(wafer)}
    assert (back.lot_id, back.wafer_number) == ("DEMO001", wafer)
    counts = {
        int(d.get("BinCode", ""), 16): int(d.get("BinCount", ""))
        for d in ET.fromstring(r.content).findall(".//e:BinDefinition", NS)
        if d.get("BinDescription") != e142.UNTESTED_DESCRIPTION
    }
    expected: dict[int, int] = {}
    for d in demo.on_wafer(wafer):
        if d.soft_bin is not None:
            expected[d.soft_bin] = expected.get(d.soft_bin, 0) + 1
    assert counts == expected


def test_each_model_has_its_own_wafer_map(
    client: TestClient, as_role: Callable[[str], dict[str, str]], two_models: tuple[DemoLot, DemoLot]
) -> None:
    for demo in two_models:
        r = client.get(
            "/v1/lots/DEMO001/wafers/1/e142", params={"model": demo.model}, headers=as_role("viewer")
        )
        assert r.status_code == 200, r.text
        stem = demo.model.replace("@", "_")
        assert f'filename="DEMO001-W01_{stem}.e142.xml"' in r.headers["content-disposition"]
        assert f"Soft-bin map of model {demo.model}.".encode() in r.content
        assert dict(e142.read_e142(r.content).bins) == {(d.x, d.y): d.soft_bin for d in demo.on_wafer(1)}
    # Without a model, a lot tested with two is refused: the file would hold one of them unannounced.
    r = client.get("/v1/lots/DEMO001/wafers/1/e142", headers=as_role("viewer"))
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "model_required"
    assert [m["model"] for m in error["details"]["models"]] == [d.model for d in two_models]

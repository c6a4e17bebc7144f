"""SEMI E142 substrate maps: one wafer's soft-bin map as XML, and the reader that parses it back.

The map is a ``2DArray`` of hexadecimal bin codes, one ``<BinCode>`` row per die row. Its frame is
stated in the file: ``OriginLocation="UpperLeft"``, ``AxisDirection="DownRight"`` (the first row is
the top row, the first code of a row is the leftmost die; map column grows right with die x, map row
grows down with die y), ``Orientation="0"`` (the notch at the bottom of the map as drawn). A reference
device named :data:`ORIGIN_DEVICE` gives the map position of die (0, 0), so die coordinates survive the
round trip. Sites without a die carry ``NullBin``; a die without a functional-test result carries the
code of the bin described as :data:`UNTESTED_DESCRIPTION` (quality ``Fail``: a picker must not take it).
"""

from __future__ import annotations

from xml.etree import ElementTree as ET

from app.exports.records import BinInfo, WaferBinMap

NAMESPACE = "urn:semi-org:xsd.E142-1.V1005.SubstrateMap"
ORIGIN_LOCATION = "UpperLeft"
AXIS_DIRECTION = "DownRight"
ORIENTATION_DEG = 0
ORIGIN_DEVICE = "OriginDie"
UNTESTED_DESCRIPTION = "untested: die present, no functional-test result"

_NS = {"e": NAMESPACE}


class E142Error(ValueError):
    """The XML is not a map this module can read."""


def _q(tag: str) -> str:
    return f"{{{NAMESPACE}}}{tag}"


def _sub(parent: ET.Element, tag: str, **attrib: str) -> ET.Element:
    return ET.SubElement(parent, _q(tag), attrib)


def write_e142(wafer: WaferBinMap) -> bytes:
    """The E142 XML document (UTF-8 bytes) for one wafer's soft-bin map."""
    if not wafer.bins:
        raise E142Error(f"wafer {wafer.substrate_id} has no die sites")
    xs = [x for x, _ in wafer.bins]
    ys = [y for _, y in wafer.bins]
    x0, y0 = min(xs), min(ys)
    n_cols, n_rows = max(xs) - x0 + 1, max(ys) - y0 + 1
    used = sorted({b for b in wafer.bins.values() if b is not None})
    if used and used[0] < 0:
        raise E142Error(f"negative bin {used[0]}")
    width = 2 if not used or used[-1] <= 0xFD else 4
    if used and used[-1] >= 16**width - 2:
        raise E142Error(f"bin {used[-1]} does not fit the map's bin codes")
    null_code = "F" * width
    untested_code = f"{16**width - 2:0{width}X}"

    ET.register_namespace("", NAMESPACE)
    root = ET.Element(_q("MapData"))
    of_model = f" of model {wafer.model}".replace("--", "- -") if wafer.model else ""  # no "--" in comments
    root.append(
        ET.Comment(
            f" Lot {wafer.lot_id} wafer {wafer.wafer_number}. Soft-bin map{of_model}. Origin upper left, "
            "rows go down (die y grows down), columns go right (die x grows right); notch at the bottom. "
            f"Reference device {ORIGIN_DEVICE} is die (0, 0). "
        )
    )
    layouts = _sub(root, "Layouts")
    top = _sub(layouts, "Layout", LayoutId="WaferLayout", DefaultUnits="mm", TopLevel="true")
    _sub(top, "Dimension", X="1", Y="1")
    _sub(_sub(top, "ChildLayouts"), "ChildLayout", LayoutId="Devices")
    devices = _sub(layouts, "Layout", LayoutId="Devices", DefaultUnits="mm")
    _sub(devices, "Dimension", X=str(n_cols), Y=str(n_rows))

    substrate = _sub(
        _sub(root, "Substrates"), "Substrate", SubstrateType="Wafer", SubstrateId=wafer.substrate_id
    )
    _sub(substrate, "LotId").text = wafer.lot_id
    _sub(substrate, "SlotNumber").text = str(wafer.wafer_number)

    smap = _sub(
        _sub(root, "SubstrateMaps"),
        "SubstrateMap",
        SubstrateType="Wafer",
        SubstrateId=wafer.substrate_id,
        LayoutSpecifier="WaferLayout/Devices",
        SubstrateSide="TopSide",
        Orientation=str(ORIENTATION_DEG),
        OriginLocation=ORIGIN_LOCATION,
        AxisDirection=AXIS_DIRECTION,
    )
    overlay = _sub(smap, "Overlay", MapName="SoftBin", MapVersion="1")
    ref = _sub(_sub(overlay, "ReferenceDevices"), "ReferenceDevice", Name=ORIGIN_DEVICE)
    _sub(ref, "Coordinates", X=str(-x0), Y=str(-y0))
    bcm = _sub(overlay, "BinCodeMap", BinType="HexaDecimal", NullBin=null_code, MapType="2DArray")
    defs = _sub(bcm, "BinDefinitions")
    counts: dict[int | None, int] = {}
    for b in wafer.bins.values():
        counts[b] = counts.get(b, 0) + 1
    for b in used:
        info = wafer.bin_info.get(b) or BinInfo(b, f"BIN{b}", 1 <= b <= 9)
        _sub(
            defs,
            "BinDefinition",
            BinCode=f"{b:0{width}X}",
            BinCount=str(counts[b]),
            BinQuality="Pass" if info.passed else "Fail",
            BinDescription=info.name,
        )
    if None in counts:
        _sub(
            defs,
            "BinDefinition",
            BinCode=untested_code,
            BinCount=str(counts[None]),
            BinQuality="Fail",
            BinDescription=UNTESTED_DESCRIPTION,
        )
    grid = [[null_code] * n_cols for _ in range(n_rows)]
    for (x, y), b in wafer.bins.items():
        grid[y - y0][x - x0] = untested_code if b is None else f"{b:0{width}X}"
    for row in grid:
        _sub(bcm, "BinCode").text = "".join(row)
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def _one(parent: ET.Element, path: str) -> ET.Element:
    found = parent.find(path, _NS)
    if found is None:
        raise E142Error(f"no {path} in the map")
    return found


def read_e142(xml: bytes | str) -> WaferBinMap:
    """Parse an E142 map written by :func:`write_e142` (or any single-wafer hexadecimal 2D-array map
    with the same frame) back into a :class:`WaferBinMap`."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise E142Error(f"not XML: {e}") from e
    if root.tag != _q("MapData"):
        raise E142Error(f"root element {root.tag!r}; expected MapData in namespace {NAMESPACE}")
    smap = _one(root, "e:SubstrateMaps/e:SubstrateMap")
    frame = (smap.get("OriginLocation"), smap.get("AxisDirection"))
    if frame != (ORIGIN_LOCATION, AXIS_DIRECTION):
        raise E142Error(f"map frame {frame}; this reader handles {(ORIGIN_LOCATION, AXIS_DIRECTION)}")
    bcm = _one(smap, "e:Overlay/e:BinCodeMap")
    if bcm.get("BinType") != "HexaDecimal":
        raise E142Error(f"BinType {bcm.get('BinType')!r}; this reader handles HexaDecimal")
    null_code = bcm.get("NullBin", "FF")
    width = len(null_code)

    origin = _one(
        smap, f"e:Overlay/e:ReferenceDevices/e:ReferenceDevice[@Name='{ORIGIN_DEVICE}']/e:Coordinates"
    )
    ox, oy = int(origin.get("X", "0")), int(origin.get("Y", "0"))

    bin_info: dict[int, BinInfo] = {}
    untested: set[str] = set()
    for d in bcm.findall("e:BinDefinitions/e:BinDefinition", _NS):
        code = d.get("BinCode", "")
        description = d.get("BinDescription", "")
        if description == UNTESTED_DESCRIPTION:
            untested.add(code)
            continue
        number = int(code, 16)
        bin_info[number] = BinInfo(number, description, d.get("BinQuality") == "Pass")

    bins: dict[tuple[int, int], int | None] = {}
    for row, element in enumerate(bcm.findall("e:BinCode", _NS)):
        text = (element.text or "").strip()
        if len(text) % width:
            raise E142Error(f"row {row}: {len(text)} characters, not a multiple of {width}")
        for col in range(len(text) // width):
            code = text[col * width : (col + 1) * width]
            if code == null_code:
                continue
            bins[(col - ox, row - oy)] = None if code in untested else int(code, 16)

    substrate_id = smap.get("SubstrateId", "")
    substrate = root.find(f"e:Substrates/e:Substrate[@SubstrateId='{substrate_id}']", _NS)
    lot_id = substrate.findtext("e:LotId", "", _NS) if substrate is not None else ""
    slot = substrate.findtext("e:SlotNumber", "0", _NS) if substrate is not None else "0"
    return WaferBinMap(
        lot_id=lot_id, wafer_number=int(slot), substrate_id=substrate_id, bins=bins, bin_info=bin_info
    )

"""OpenAPI examples of the dashboard JSON and the export files (taken from the demo lot, lists cut to two
items)."""

from __future__ import annotations

from typing import Any

from app.api.schemas.provenance import PROVENANCE_EXAMPLE

MODELS_TESTED: Any = [
    {
        "model": "kws-bnn@1.0.0",
        "n_tested": 86,
        "n_passed": 53,
        "yield_pct": 61.628,
        "last_tested_at": "2026-03-02T08:55:50Z",
    },
    {
        "model": "digits-bnn@1",
        "n_tested": 48,
        "n_passed": 20,
        "yield_pct": 41.667,
        "last_tested_at": "2026-03-02T09:55:50Z",
    },
]

LOTS_EXAMPLE: Any = {
    "items": [
        {
            "lot_id": "LOT0001",
            "product": "KWS-BCIM-1",
            "created_at": "2026-11-26T11:08:40.663036Z",
            "n_wafers": 3,
            "n_dies": 111,
            "n_characterized": 95,
            "model": "kws-bnn@1.0.0",
            "n_tested": 86,
            "n_passed": 53,
            "yield_pct": 61.628,
            "models": MODELS_TESTED,
            "latest_job": {
                "job_id": 1,
                "kind": "calibrate",
                "state": "running",
                "created_at": "2026-03-02T08:00:00Z",
            },
        }
    ],
    "total": 1,
    "limit": 50,
    "offset": 0,
}

LOT_EXAMPLE: Any = {
    "lot_id": "LOT0001",
    "product": "KWS-BCIM-1",
    "created_at": "2026-11-26T11:08:40.663036Z",
    "model": "kws-bnn@1.0.0",
    "models": MODELS_TESTED,
    "n_dies": 111,
    "n_characterized": 95,
    "n_tested": 86,
    "n_passed": 53,
    "yield_pct": 61.628,
    "wafers": [
        {
            "number": 1,
            "n_sites": 37,
            "n_characterized": 32,
            "n_tested": 29,
            "n_passed": 15,
            "yield_pct": 51.724,
            "mean_accuracy_before_pct": 32.225,
            "mean_accuracy_after_pct": 73.737,
        },
        {
            "number": 2,
            "n_sites": 37,
            "n_characterized": 31,
            "n_tested": 28,
            "n_passed": 20,
            "yield_pct": 71.429,
            "mean_accuracy_before_pct": 32.136,
            "mean_accuracy_after_pct": 77.269,
        },
    ],
    "pareto": [
        {"soft_bin": 2, "name": "pass grade 2", "passed": True, "count": 27, "color": "#66bd63"},
        {"soft_bin": 1, "name": "pass grade 1", "passed": True, "count": 26, "color": "#1a9850"},
    ],
    "accuracy_before_pct": [22.304, 28.793],
    "accuracy_after_pct": [64.571, 73.357],
    "accuracy_before_stats": {
        "n": 86,
        "mean": 31.882,
        "std": 6.567,
        "min": 18.516,
        "max": 48.566,
        "cpk": None,
    },
    "accuracy_after_stats": {
        "n": 86,
        "mean": 75.391,
        "std": 8.848,
        "min": 61.756,
        "max": 92.52,
        "cpk": 0.203,
    },
    "accuracy_lsl_pct": 70.0,
    "yield_trend": {
        "metric": "yield",
        "units": "%",
        "center": 61.741,
        "ucl": 91.31,
        "lcl": 32.172,
        "points": [
            {"wafer": 1, "value": 51.724, "out_of_control": False},
            {"wafer": 2, "value": 71.429, "out_of_control": False},
        ],
    },
    "accuracy_trend": {
        "metric": "mean accuracy after calibration",
        "units": "%",
        "center": 75.412,
        "ucl": 80.731,
        "lcl": 70.093,
        "points": [
            {"wafer": 1, "value": 73.737, "out_of_control": False},
            {"wafer": 2, "value": 77.269, "out_of_control": False},
        ],
    },
    "jobs": [{"job_id": 1, "kind": "calibrate", "state": "running", "created_at": "2026-03-02T08:00:00Z"}],
    "yields": {
        "n_tested": 86,
        "n_passed": 53,
        "n_failed": 33,
        "yield_pct": 61.628,
        "n_first_tested": 87,
        "n_first_passed": 52,
        "first_pass_yield_pct": 59.77,
        "n_retested": 1,
        "n_alarms": 2,
        "n_alarmed": 2,
        "n_retest_pending": 1,
    },
}

WAFER_EXAMPLE: Any = {
    "lot_id": "LOT0001",
    "product": "KWS-BCIM-1",
    "number": 1,
    "model": "kws-bnn@1.0.0",
    "models": MODELS_TESTED,
    "n_sites": 37,
    "n_characterized": 32,
    "n_tested": 29,
    "n_passed": 15,
    "yield_pct": 51.724,
    "frame": {
        "x_min": -3,
        "x_max": 3,
        "y_min": -3,
        "y_max": 3,
        "x_direction": "right",
        "y_direction": "down",
        "notch": "bottom",
    },
    "shape": {"kind": "circular", "diameter": 8},
    "legend": [
        {"soft_bin": 11, "name": "fail bin 11", "passed": False, "count": 11, "color": "#f46d43"},
        {"soft_bin": 2, "name": "pass grade 2", "passed": True, "count": 8, "color": "#66bd63"},
    ],
    "dies": [
        {
            "ecid": "LOT0001-W01-X-001Y-003",
            "x": -1,
            "y": -3,
            "soft_bin": 11,
            "hard_bin": 2,
            "passed": False,
            "color": "#f46d43",
            "model": "kws-bnn@1.0.0",
            "accuracy_before_pct": 22.304,
            "accuracy_after_pct": 64.571,
            "offset_spread_mac": 1.4,
            "n_dead_cols": 3,
            "n_stuck_cells": 5,
            "tester_s": 1.576,
            "test_time_s": 0.882,
        },
        {
            "ecid": "LOT0001-W01-X+000Y-003",
            "x": 0,
            "y": -3,
            "soft_bin": 2,
            "hard_bin": 1,
            "passed": True,
            "color": "#66bd63",
            "model": "kws-bnn@1.0.0",
            "accuracy_before_pct": 28.793,
            "accuracy_after_pct": 73.357,
            "offset_spread_mac": 1.279,
            "n_dead_cols": 2,
            "n_stuck_cells": 4,
            "tester_s": 1.506,
            "test_time_s": 0.839,
        },
    ],
    "parametrics": [
        {"key": "offset_spread_mac", "label": "column offset spread", "units": "MAC"},
        {"key": "accuracy_before_pct", "label": "accuracy before calibration", "units": "%"},
    ],
}

DIE_EXAMPLE: Any = {
    "ecid": "LOT0001-W01-X+000Y-001",
    "lot_id": "LOT0001",
    "wafer": 1,
    "x": 0,
    "y": -1,
    "created_at": "2026-11-26T11:08:40.669488Z",
    "model": "kws-bnn@1.0.0",
    "models": ["kws-bnn@1.0.0"],
    "final": {
        "lot_id": "LOT0001",
        "wafer": 1,
        "x": 0,
        "y": -1,
        "ecid": "LOT0001-W01-X+000Y-001",
        "model": "kws-bnn@1.0.0",
        "soft_bin": 1,
        "hard_bin": 1,
        "passed": True,
        "accuracy_before": 0.419,
        "accuracy_after": 0.852,
        "test_time_s": 0.801,
        "tested_at": "2026-03-02T08:06:20Z",
        "site": 0,
        "signature_version": 1,
        "reads": 20540,
        "retries": 1,
        "tester_s": 1.614,
        "n_dead_cols": 0,
        "n_stuck_cells": 4,
        "offset_spread_mac": 0.923,
        "characterized_at": "2026-03-02T08:06:00Z",
    },
    "final_color": "#1a9850",
    "signature": {
        "version": 1,
        "is_current": True,
        "sha256": "35697b84e031ca64e353be99a506c8763516a985d3a22e290f372d490a229a3b",
        "reads": 20540,
        "tester_s": 1.614,
        "n_dead_cols": 0,
        "n_stuck_cells": 4,
        "offset_spread_mac": 0.923,
        "created_at": "2026-03-02T08:06:00Z",
        "retries": 1,
        "provenance": PROVENANCE_EXAMPLE,
    },
    "signature_history": [
        {
            "version": 1,
            "is_current": True,
            "sha256": "35697b84e031ca64e353be99a506c8763516a985d3a22e290f372d490a229a3b",
            "reads": 20540,
            "tester_s": 1.614,
            "n_dead_cols": 0,
            "n_stuck_cells": 4,
            "offset_spread_mac": 0.923,
            "created_at": "2026-03-02T08:06:00Z",
            "retries": 1,
            "provenance": PROVENANCE_EXAMPLE,
        }
    ],
    "signature_detail": {
        "n_macros": 4,
        "rows": 64,
        "data_cols": 16,
        "spare_cols": 2,
        "gain": [[0.985, 1.022], [1.013, 0.974]],
        "offset_mac": [[-0.52, -0.153], [-0.211, 0.376]],
        "dead_cols": [[0, 0], [0, 0]],
        "stuck_cells": [[1, 0], [0, 0]],
        "noise_sigma_mac": [1.0, 1.0],
        "summary": {
            "gain_mean": 0.996,
            "gain_spread": 0.027,
            "offset_mean_mac": -0.136,
            "offset_spread_mac": 0.855,
            "noise_sigma_mac": 1.0,
            "cell_sigma": 0.06,
            "n_dead_cols": 0.0,
            "n_stuck_cells": 4.0,
            "has_cell_error": 0.0,
            "bytes": 1223.0,
        },
        "error": None,
    },
    "images": [
        {
            "model": "kws-bnn",
            "model_version": "1.0.0",
            "signature_version": 1,
            "content_sha256": "e92b306a1dcda331b6ca5e8d2bfb1451cacffe7c6de9d7049f11c320eacc78d7",
            "size_bytes": 65536,
            "created_at": "2026-03-02T08:06:05Z",
            "provenance": PROVENANCE_EXAMPLE,
        }
    ],
    "tests": [
        {
            "model": "kws-bnn",
            "model_version": "1.0.0",
            "calibrated": False,
            "accuracy_pct": 41.917,
            "hard_bin": 2,
            "soft_bin": 11,
            "passed": False,
            "color": "#f46d43",
            "test_time_s": 0.801,
            "created_at": "2026-03-02T08:06:10Z",
            "retries": 0,
            "provenance": PROVENANCE_EXAMPLE,
            "reason": None,
        },
        {
            "model": "kws-bnn",
            "model_version": "1.0.0",
            "calibrated": True,
            "accuracy_pct": 85.211,
            "hard_bin": 1,
            "soft_bin": 1,
            "passed": True,
            "color": "#1a9850",
            "test_time_s": 0.801,
            "created_at": "2026-03-02T08:06:20Z",
            "retries": 0,
            "provenance": PROVENANCE_EXAMPLE,
            "reason": None,
        },
    ],
}

JOBS_EXAMPLE: Any = [
    {
        "id": 1,
        "kind": "calibrate",
        "state": "running",
        "created_by": "demo",
        "created_at": "2026-03-02T08:00:00Z",
        "finished_at": None,
    }
]

JOB_EXAMPLE: Any = {
    "id": 1,
    "kind": "calibrate",
    "state": "running",
    "terminal": False,
    "params": {"lot_id": "LOT0001"},
    "counters": {},
    "created_by": "demo",
    "created_at": "2026-03-02T08:00:00Z",
    "started_at": None,
    "finished_at": None,
    "n_items": 206,
    "n_done": 181,
    "progress": 0.879,
    "items": [
        {"step": "characterize", "state": "queued", "count": 16},
        {"step": "characterize", "state": "succeeded", "count": 95},
    ],
    "errors": [],
}
CSV_EXAMPLE = (
    "lot_id,wafer,x,y,ecid,model,soft_bin,hard_bin,passed,accuracy_before,accuracy_after,test_time_s,"
    "tested_at,site,signature_version,reads,retries,tester_s,n_dead_cols,n_stuck_cells,offset_spread_mac,"
    "characterized_at,first_pass,n_tests,n_alarms,alarm_code,reason\n"
    "LOT0001,1,0,-3,LOT0001-W01-X+000Y-003,kws-bnn@1.0.0,2,1,True,0.2879329105324384,0.7335675283106033,0.839,"
    "2026-03-02T08:01:20+00:00,0,1,21922,0,1.506,2,4,1.27919486198959,2026-03-02T08:01:00+00:00,True,1,0,,\n"
    "LOT0001,1,1,-3,LOT0001-W01-X+001Y-003,kws-bnn@1.0.0,0,0,,,,,2026-03-02T08:01:58+00:00,1,1,21466,0,1.522,"
    "1,3,1.30121,2026-03-02T08:01:30+00:00,False,1,1,hardware_timeout,"
    "functional-test: hardware_timeout: run_network did not complete within 5 s (gave up after 4 attempts)\n"
    "LOT0001,1,-2,-2,LOT0001-W01-X-002Y-002,kws-bnn@1.0.0,,,,,,,,,,,,,,,,,,0,0,,\n"
)

E142_EXAMPLE = """<?xml version='1.0' encoding='UTF-8'?>
<MapData xmlns="urn:semi-org:xsd.E142-1.V1005.SubstrateMap">
  <Layouts>
    <Layout LayoutId="WaferLayout" DefaultUnits="mm" TopLevel="true">
      <Dimension X="1" Y="1" />
      <ChildLayouts><ChildLayout LayoutId="Devices" /></ChildLayouts>
    </Layout>
    <Layout LayoutId="Devices" DefaultUnits="mm"><Dimension X="3" Y="2" /></Layout>
  </Layouts>
  <Substrates>
    <Substrate SubstrateType="Wafer" SubstrateId="LOT0001-W01">
      <LotId>LOT0001</LotId>
      <SlotNumber>1</SlotNumber>
    </Substrate>
  </Substrates>
  <SubstrateMaps>
    <SubstrateMap SubstrateType="Wafer" SubstrateId="LOT0001-W01" LayoutSpecifier="WaferLayout/Devices"
        SubstrateSide="TopSide" Orientation="0" OriginLocation="UpperLeft" AxisDirection="DownRight">
      <Overlay MapName="SoftBin" MapVersion="1">
        <ReferenceDevices>
          <ReferenceDevice Name="OriginDie"><Coordinates X="1" Y="0" /></ReferenceDevice>
        </ReferenceDevices>
        <BinCodeMap BinType="HexaDecimal" NullBin="FF" MapType="2DArray">
          <BinDefinitions>
            <BinDefinition BinCode="01" BinCount="3" BinQuality="Pass" BinDescription="pass grade 1" />
            <BinDefinition BinCode="0B" BinCount="1" BinQuality="Fail" BinDescription="fail bin 11" />
            <BinDefinition BinCode="FE" BinCount="1" BinQuality="Fail"
                BinDescription="untested: die present, no functional-test result" />
          </BinDefinitions>
          <BinCode>FF0101</BinCode>
          <BinCode>0B01FE</BinCode>
        </BinCodeMap>
      </Overlay>
    </SubstrateMap>
  </SubstrateMaps>
</MapData>
"""

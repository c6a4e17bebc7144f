"""STDF V4: the writer's records read back by pystdf (an independent reader), and the lot export checked
field by field against the database."""

from __future__ import annotations

import dataclasses
import struct
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.api.health import VERSION
from app.db.session import session_scope
from app.exports import stdf
from app.exports.records import (
    BinInfo,
    LotResult,
    ParametricTest,
    PartResult,
    SiteDescription,
    WaferResult,
)
from app.services.reporting import exports as plan
from app.services.reporting.stats import ACCURACY_LSL_PCT
from tests.dashboard.demo import DEMO_TESTERS, DemoLot, build_demo_lot
from tests.exports.pystdf_reader import of_type, read_stdf

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
ACC = ParametricTest(2, "accuracy", "%", 70.0, 100.0)
SPREAD = ParametricTest(1, "offset spread", "MAC")


def _lot(parts: tuple[PartResult, ...] = ()) -> LotResult:
    parts = parts or (
        PartResult("L1-W01-X-001Y+002", -1, 2, 1, 1, True, 1500, ((1, 0.5), (2, 80.0))),
        PartResult("L1-W01-X+003Y-004", 3, -4, 2, 11, False, 1000, ((2, 50.0),)),
    )
    return LotResult(
        lot_id="L1",
        product="KWS-BCIM-1",
        setup_at=T0,
        started_at=T0,
        finished_at=T0,
        tests=(SPREAD, ACC),
        wafers=(WaferResult(1, "L1-W01", T0, T0, parts),),
        soft_bins={1: BinInfo(1, "pass grade 1", True), 11: BinInfo(11, "fail bin 11", False)},
        hard_bins={},
    )


def test_records_read_back_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    records = read_stdf(stdf.write_stdf(_lot()))
    assert "Broken header" not in capsys.readouterr().err  # every record's length matches its fields
    names = [name for name, _ in records]
    assert names == [
        "FAR", "MIR", "WCR", "WIR",
        "PIR", "PTR", "PTR", "PRR",
        "PIR", "PTR", "PRR",
        "WRR", "TSR", "TSR", "HBR", "HBR", "SBR", "SBR", "PCR", "MRR",
    ]  # fmt: skip
    far = records[0][1]
    assert (far["CPU_TYPE"], far["STDF_VER"]) == (2, 4)
    wcr = records[2][1]
    assert (wcr["POS_X"], wcr["POS_Y"], wcr["WF_FLAT"]) == ("R", "D", "D")


def test_sites_and_tester_read_back() -> None:
    """The SDR lists the sites, every part's PIR / PTR / PRR carry its own, the MIR names the tester."""
    parts = (
        PartResult("L1-W01-X-001Y+002", -1, 2, 1, 1, True, 1500, ((1, 0.5), (2, 80.0)), site=3),
        PartResult("L1-W01-X+003Y-004", 3, -4, 2, 11, False, 1000, ((2, 50.0),), site=1),
    )
    sites = SiteDescription(
        (1, 3), card_type="ACME CIM-9", card_id="1=TCPIP0::a, 3=b:5025", extra_type="cimcal driver acme"
    )
    lot = dataclasses.replace(
        _lot(parts),
        sites=sites,
        node_name="st-1",
        tester_type="ACME CIM-9",
        serial_number="A9",
        setup_id="ab" * 32,
    )
    records = read_stdf(stdf.write_stdf(lot))
    assert [n for n, _ in records][:4] == ["FAR", "MIR", "SDR", "WCR"]
    (sdr,) = of_type(records, "SDR")
    assert (sdr["HEAD_NUM"], sdr["SITE_GRP"], sdr["SITE_CNT"], list(sdr["SITE_NUM"])) == (1, 1, 2, [1, 3])
    assert (sdr["CARD_TYP"], sdr["CARD_ID"], sdr["EXTR_TYP"], sdr["HAND_TYP"]) == (
        "ACME CIM-9",
        "1=TCPIP0::a, 3=b:5025",
        "cimcal driver acme",
        "",
    )
    (mir,) = of_type(records, "MIR")
    assert (mir["NODE_NAM"], mir["TSTR_TYP"], mir["SERL_NUM"], mir["SETUP_ID"]) == (
        "st-1",
        "ACME CIM-9",
        "A9",
        "ab" * 32,
    )
    assert [r["SITE_NUM"] for r in of_type(records, "PIR")] == [3, 1]
    assert [r["SITE_NUM"] for r in of_type(records, "PTR")] == [3, 3, 1]
    assert [r["SITE_NUM"] for r in of_type(records, "PRR")] == [3, 1]
    with pytest.raises(stdf.StdfError, match="SITE_NUM"):
        stdf.write_stdf(_lot((dataclasses.replace(parts[0], site=256),)))


def test_ptr_limits_units_and_flags() -> None:
    ptrs = of_type(read_stdf(stdf.write_stdf(_lot())), "PTR")
    spread, acc_pass, acc_fail = ptrs
    # No limits: no pass/fail indication, both limits flagged absent; bit 1 (reserved) set.
    assert spread["TEST_FLG"] == stdf.NO_PASS_FAIL
    assert spread["OPT_FLAG"] & 0xC2 == 0xC2
    assert (spread["UNITS"], spread["TEST_TXT"]) == ("MAC", "offset spread")
    assert acc_pass["TEST_FLG"] == 0 and acc_fail["TEST_FLG"] == stdf.TEST_FAILED
    assert acc_pass["OPT_FLAG"] == stdf.OPT_BASE  # both limits valid
    assert (acc_pass["LO_LIMIT"], acc_pass["HI_LIMIT"], acc_pass["UNITS"]) == (70.0, 100.0, "%")
    assert acc_pass["RESULT"] == 80.0 and acc_fail["RESULT"] == 50.0


def test_summary_records_count_the_parts() -> None:
    records = read_stdf(stdf.write_stdf(_lot()))
    (wrr,) = of_type(records, "WRR")
    assert (wrr["PART_CNT"], wrr["GOOD_CNT"], wrr["WAFER_ID"]) == (2, 1, "L1-W01")
    sbr = {r["SBIN_NUM"]: r for r in of_type(records, "SBR")}
    assert {b: (r["SBIN_CNT"], r["SBIN_PF"], r["SBIN_NAM"]) for b, r in sbr.items()} == {
        1: (1, "P", "pass grade 1"),
        11: (1, "F", "fail bin 11"),
    }
    hbr = {r["HBIN_NUM"]: (r["HBIN_CNT"], r["HBIN_PF"]) for r in of_type(records, "HBR")}
    assert hbr == {1: (1, "P"), 2: (1, "F")}
    (pcr,) = of_type(records, "PCR")
    assert (pcr["PART_CNT"], pcr["GOOD_CNT"]) == (2, 1)
    tsr = {r["TEST_NUM"]: r for r in of_type(records, "TSR")}
    assert (tsr[2]["EXEC_CNT"], tsr[2]["FAIL_CNT"], tsr[2]["TEST_MIN"], tsr[2]["TEST_MAX"]) == (
        2,
        1,
        50.0,
        80.0,
    )
    assert tsr[2]["TEST_NAM"] == "accuracy"


@pytest.mark.parametrize(
    ("part", "field"),
    [
        (PartResult("E", 40_000, 0, 1, 1, True, 0), "X_COORD"),
        (PartResult("E", 0, 0, 1, 70_000, True, 0), "SOFT_BIN"),
    ],
)
def test_values_that_do_not_fit_are_refused(part: PartResult, field: str) -> None:
    with pytest.raises(stdf.StdfError, match=field):
        stdf.write_stdf(_lot((part,)))


def test_result_for_a_test_outside_the_plan_is_refused() -> None:
    with pytest.raises(stdf.StdfError, match="test 99"):
        stdf.write_stdf(_lot((PartResult("E", 0, 0, 1, 1, True, 0, ((99, 1.0),)),)))


def test_records_match_the_semi_ate_encoder() -> None:
    """A second, independent STDF writer packs the same PTR and PRR to the same bytes."""
    semi = pytest.importorskip("Semi_ATE.STDF")
    ptr = semi.PTR(endian="<")
    for k, v in {
        "TEST_NUM": 2, "HEAD_NUM": 1, "SITE_NUM": 1, "TEST_FLG": 0, "PARM_FLG": 0, "RESULT": 80.0,
        "TEST_TXT": "accuracy", "ALARM_ID": "", "OPT_FLAG": stdf.OPT_BASE, "RES_SCAL": 0, "LLM_SCAL": 0,
        "HLM_SCAL": 0, "LO_LIMIT": 70.0, "HI_LIMIT": 100.0, "UNITS": "%", "C_RESFMT": "", "C_LLMFMT": "",
        "C_HLMFMT": "", "LO_SPEC": 0.0, "HI_SPEC": 0.0,
    }.items():  # fmt: skip
        ptr.set_value(k, v)
    assert ptr.__repr__() == stdf.ptr(ACC, 80.0)  # Semi-ATE packs through __repr__
    prr = semi.PRR(endian="<")
    for k, v in {
        "HEAD_NUM": 1, "SITE_NUM": 1, "PART_FLG": stdf.PART_FAILED, "NUM_TEST": 1, "HARD_BIN": 2,
        "SOFT_BIN": 11, "X_COORD": 3, "Y_COORD": -4, "TEST_T": 1000, "PART_ID": "E2", "PART_TXT": "",
        "PART_FIX": [],
    }.items():  # fmt: skip
        prr.set_value(k, v)
    assert prr.__repr__() == stdf.prr(PartResult("E2", 3, -4, 2, 11, False, 1000, ((2, 50.0),)), 1)


# ------------------------------------------------------------------------------------ lot export
@pytest.fixture
def demo(session_factory: sessionmaker[Session]) -> DemoLot:
    with session_scope(session_factory) as s:
        return build_demo_lot(s)


def _f32(v: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", v))[0])


def test_lot_stdf_matches_the_database(
    client: TestClient, as_role: Callable[[str], dict[str, str]], demo: DemoLot
) -> None:
    r = client.get("/v1/lots/DEMO001/stdf", headers=as_role("viewer"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert 'filename="DEMO001_kws-bnn_1.0.0.stdf"' in r.headers["content-disposition"]
    assert r.content[:6] == struct.pack("<HBBBB", 2, 0, 10, 2, 4)  # FAR: little-endian, V4
    records = read_stdf(r.content)
    counts = Counter(name for name, _ in records)
    tested = demo.tested
    (alarmed,) = demo.alarmed
    parts = demo.with_result
    assert [counts[n] for n in ("FAR", "MIR", "SDR", "WCR", "PCR", "MRR")] == [1] * 6
    assert counts["WIR"] == counts["WRR"] == len(demo.wafers)
    assert counts["PIR"] == counts["PRR"] == len(parts) == len(tested) + 1
    assert counts["TSR"] == len(plan.TEST_PLAN)
    # Characterized dies carry 5 signature figures, tested ones 2 accuracies; the alarmed die was
    # characterized but its functional test never ran: no accuracy PTR.
    assert counts["PTR"] == 7 * len(tested) + 5
    (mir,) = of_type(records, "MIR")
    assert (mir["LOT_ID"], mir["PART_TYP"]) == ("DEMO001", "KWS-BCIM-1")
    assert (mir["JOB_NAM"], mir["JOB_REV"], mir["EXEC_TYP"], mir["EXEC_VER"]) == (
        "kws-bnn",
        "1.0.0",
        "cimcal",
        VERSION,
    )
    # The tester and its sites, as the demo lot recorded them (dies alternate between two sites).
    tester = DEMO_TESTERS[0]
    assert (mir["NODE_NAM"], mir["TSTR_TYP"], mir["SERL_NUM"], mir["SETUP_ID"]) == (
        tester.host,
        f"{tester.vendor} {tester.model}",
        tester.serial,
        tester.options_sha256,
    )
    (sdr,) = of_type(records, "SDR")
    assert sdr["SITE_CNT"] == 2 and list(sdr["SITE_NUM"]) == [1, 2]
    assert (sdr["CARD_TYP"], sdr["CARD_ID"], sdr["EXTR_TYP"], sdr["EXTR_ID"]) == (
        "ACME Test Systems CIM-9",
        ", ".join(f"{t.site + 1}={t.resource}" for t in DEMO_TESTERS),
        f"cimcal driver {tester.driver}",
        tester.driver_version,
    )
    assert {d.site for d in tested} == {0, 1}

    # Walk the parts: every PRR closes the PTRs since its PIR.
    by_ecid: dict[str, tuple[dict[str, Any], dict[int, dict[str, Any]]]] = {}
    wafer_of_part: dict[str, str] = {}
    current_wafer = ""
    ptrs: dict[int, dict[str, Any]] = {}
    for name, fields in records:
        if name == "WIR":
            current_wafer = str(fields["WAFER_ID"])
        elif name == "PIR":
            ptrs = {}
        elif name == "PTR":
            ptrs[int(fields["TEST_NUM"])] = fields
        elif name == "PRR":
            by_ecid[str(fields["PART_ID"])] = (fields, ptrs)
            wafer_of_part[str(fields["PART_ID"])] = current_wafer
    assert set(by_ecid) == {d.ecid for d in parts}
    prr, tests = by_ecid[alarmed.ecid]
    assert (prr["SOFT_BIN"], prr["HARD_BIN"], prr["NUM_TEST"]) == (0, 0, 5)
    assert int(prr["PART_FLG"]) & stdf.PART_ABNORMAL_END and int(prr["PART_FLG"]) & stdf.PART_NO_PASS_FAIL
    assert plan.TEST_ACC_BEFORE.number not in tests and plan.TEST_ACC_AFTER.number not in tests
    assert alarmed.tester_s is not None and prr["TEST_T"] == round(1000 * alarmed.tester_s)
    assert alarmed.site is not None and prr["SITE_NUM"] == alarmed.site + 1
    for d in tested:
        prr, tests = by_ecid[d.ecid]
        assert wafer_of_part[d.ecid] == f"DEMO001-W{d.wafer:02d}"
        assert (prr["X_COORD"], prr["Y_COORD"]) == (d.x, d.y)
        assert (prr["SOFT_BIN"], prr["HARD_BIN"]) == (d.soft_bin, d.hard_bin)
        assert d.site is not None and prr["SITE_NUM"] == d.site + 1
        assert {int(t["SITE_NUM"]) for t in tests.values()} == {d.site + 1}
        assert d.soft_bin is not None
        assert bool(int(prr["PART_FLG"]) & stdf.PART_FAILED) == (not 1 <= d.soft_bin <= 9)
        assert not int(prr["PART_FLG"]) & (stdf.PART_ABNORMAL_END | stdf.PART_NO_PASS_FAIL)
        assert d.tester_s is not None and d.test_time_s is not None
        assert prr["TEST_T"] == round(1000 * (d.tester_s + d.test_time_s))
        assert prr["NUM_TEST"] == len(tests) == 7
        assert prr["PART_TXT"] == "kws-bnn@1.0.0"
        assert d.accuracy_before is not None and d.accuracy_after is not None
        expected = {
            plan.TEST_OFFSET_SPREAD.number: d.offset_spread_mac,
            plan.TEST_DEAD_COLS.number: d.n_dead_cols,
            plan.TEST_STUCK_CELLS.number: d.n_stuck_cells,
            plan.TEST_CHAR_TIME.number: d.tester_s,
            plan.TEST_CHAR_READS.number: d.reads,
            plan.TEST_ACC_BEFORE.number: 100 * d.accuracy_before,
            plan.TEST_ACC_AFTER.number: 100 * d.accuracy_after,
        }
        for number, value in expected.items():
            assert value is not None
            assert tests[number]["RESULT"] == pytest.approx(_f32(float(value)), rel=1e-6), (d.ecid, number)
        after = tests[plan.TEST_ACC_AFTER.number]
        assert (after["LO_LIMIT"], after["HI_LIMIT"], after["UNITS"]) == (
            ACCURACY_LSL_PCT,
            100.0,
            "%",
        )
        assert bool(int(after["TEST_FLG"]) & stdf.TEST_FAILED) == (100 * d.accuracy_after < ACCURACY_LSL_PCT)
        assert tests[plan.TEST_OFFSET_SPREAD.number]["UNITS"] == "MAC"

    sbr = {int(r["SBIN_NUM"]): int(r["SBIN_CNT"]) for r in of_type(records, "SBR")}
    assert sbr == dict(Counter(d.soft_bin for d in parts))
    hbr = {int(r["HBIN_NUM"]): int(r["HBIN_CNT"]) for r in of_type(records, "HBR")}
    assert hbr == dict(Counter(d.hard_bin for d in parts))
    (alarm_bin,) = [r for r in of_type(records, "SBR") if int(r["SBIN_NUM"]) == 0]
    assert alarm_bin["SBIN_PF"] == " "  # neither pass nor fail
    for w in of_type(records, "WRR"):
        number = int(str(w["WAFER_ID"])[-2:])
        on_wafer = [d for d in parts if d.wafer == number]
        assert w["PART_CNT"] == len(on_wafer)
        assert w["GOOD_CNT"] == sum(1 <= (d.soft_bin or 0) <= 9 for d in on_wafer)
        assert w["RTST_CNT"] == sum(d.n_tests > 1 for d in on_wafer)
        assert w["ABRT_CNT"] == sum(d.n_alarms for d in on_wafer)
    (pcr,) = of_type(records, "PCR")
    # One die alarmed and waits for a retest; another alarmed first and passed its retest.
    assert (pcr["PART_CNT"], pcr["RTST_CNT"], pcr["ABRT_CNT"]) == (len(parts), 1, 2)
    assert pcr["GOOD_CNT"] == sum(1 <= (d.soft_bin or 0) <= 9 for d in parts)


def _parts(records: list[tuple[str, dict[str, Any]]]) -> dict[str, tuple[dict[str, Any], dict[int, float]]]:
    """ECID -> (PRR, {test number: PTR result}) of every part."""
    parts: dict[str, tuple[dict[str, Any], dict[int, float]]] = {}
    results: dict[int, float] = {}
    for name, fields in records:
        if name == "PIR":
            results = {}
        elif name == "PTR":
            results[int(fields["TEST_NUM"])] = float(fields["RESULT"])
        elif name == "PRR":
            parts[str(fields["PART_ID"])] = (fields, results)
    return parts


def test_one_stdf_file_per_model(
    client: TestClient, as_role: Callable[[str], dict[str, str]], two_models: tuple[DemoLot, DemoLot]
) -> None:
    for demo in two_models:
        r = client.get("/v1/lots/DEMO001/stdf", params={"model": demo.model}, headers=as_role("viewer"))
        assert r.status_code == 200, r.text
        name, version = demo.model.split("@")
        assert f'filename="DEMO001_{name}_{version}.stdf"' in r.headers["content-disposition"]
        records = read_stdf(r.content)
        (mir,) = of_type(records, "MIR")
        assert (mir["LOT_ID"], mir["PART_TYP"], mir["JOB_NAM"], mir["JOB_REV"]) == (
            "DEMO001",
            "KWS-BCIM-1",
            name,
            version,
        )
        parts = _parts(records)
        assert set(parts) == {d.ecid for d in demo.with_result}
        for d in demo.tested:
            prr, results = parts[d.ecid]
            assert (prr["SOFT_BIN"], prr["HARD_BIN"], prr["PART_TXT"]) == (d.soft_bin, d.hard_bin, demo.model)
            assert d.accuracy_before is not None and d.accuracy_after is not None and d.tester_s is not None
            assert results[plan.TEST_ACC_BEFORE.number] == pytest.approx(_f32(100 * d.accuracy_before))
            assert results[plan.TEST_ACC_AFTER.number] == pytest.approx(_f32(100 * d.accuracy_after))
            assert prr["TEST_T"] == round(1000 * (d.tester_s + (d.test_time_s or 0.0)))
        sbr = {int(b["SBIN_NUM"]): int(b["SBIN_CNT"]) for b in of_type(records, "SBR")}
        assert sbr == dict(Counter(d.soft_bin for d in demo.with_result))
        (pcr,) = of_type(records, "PCR")
        assert pcr["PART_CNT"] == len(demo.with_result)
    first, second = two_models
    assert not {d.soft_bin for d in first.tested} & {d.soft_bin for d in second.tested}


def test_stdf_of_a_lot_with_several_models_needs_the_model(
    client: TestClient, as_role: Callable[[str], dict[str, str]], two_models: tuple[DemoLot, DemoLot]
) -> None:
    r = client.get("/v1/lots/DEMO001/stdf", headers=as_role("viewer"))
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "model_required"
    assert error["details"] == {"models": [{"model": d.model, "n_tested": len(d.tested)} for d in two_models]}
    r = client.get("/v1/lots/DEMO001/stdf", params={"model": "kws-bnn@9"}, headers=as_role("viewer"))
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    r = client.get("/v1/lots/DEMO001/stdf", params={"model": "kws-bnn"}, headers=as_role("viewer"))
    assert (r.status_code, r.json()["error"]["code"]) == (422, "validation_error")

"""A lot calibrated by the real job steps on a simulated fleet with injected faults, read back from
every export and dashboard endpoint: alarms and die faults appear as what happened (bins, abnormal
end, reasons), never as a measured 0 % or 0 s.

Job 1 runs with every tester call timing out (``p_timeout=1``): each die ends in the alarm bin at
characterization. Job 2 retests the first die on a fleet where every die is a gross defect
(``p_gross_defect=1``): a die-fault verdict, also without a measurement.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.session import session_scope
from app.exports import e142, stdf
from app.jobs.steps import calibration_steps
from app.services import jobs
from app.services.jobs import STEP_ORDER, ExecutionContext, RetryPolicy, process_chunk
from app.services.reporting.bins import ALARM_BIN
from tests.exports.pystdf_reader import of_type, read_stdf
from tests.jobs.conftest import add_models, register_lot

LOT = "FAULTS1"
MODEL = "kws@1"
FAST = RetryPolicy(max_attempts=2, backoff_s=0.0, backoff_max_s=0.0)


def _run_job(factory: sessionmaker[Session], settings: Settings, ecids: tuple[str, ...] | None) -> None:
    with session_scope(factory) as s:
        selection = None if ecids is None else jobs.DieSelection(kind="ecids", ecids=ecids)
        job_id = jobs.create_calibration_job(
            s, lot_id=LOT, steps=STEP_ORDER, model=MODEL, dies=selection, retry=FAST, actor="tests"
        ).id
    context = ExecutionContext(factory, calibration_steps(factory, settings))
    process_chunk(context, job_id, jobs.open_die_ids(factory, job_id))


@pytest.fixture
def faulty_lot(session_factory: sessionmaker[Session], settings: Settings) -> list[str]:
    ecids = register_lot(session_factory, LOT, wafers=1, columns=3, rows=1)
    add_models(session_factory, (MODEL,))
    _run_job(session_factory, settings.model_copy(update={"p_timeout": 1.0}), None)
    _run_job(session_factory, settings.model_copy(update={"p_gross_defect": 1.0}), (ecids[0],))
    return ecids


def test_injected_faults_export_no_invented_values(
    client: TestClient, as_role: Callable[[str], dict[str, str]], faulty_lot: list[str]
) -> None:
    retested, *pending = faulty_lot
    headers = as_role("viewer")

    # STDF, read by pystdf.
    r = client.get(f"/v1/lots/{LOT}/stdf", headers=headers)
    assert r.status_code == 200, r.text
    records = read_stdf(r.content)
    assert of_type(records, "PTR") == []  # nothing was measured, so no parametric result at all
    prrs = {str(p["PART_ID"]): p for p in of_type(records, "PRR")}
    assert set(prrs) == set(faulty_lot)
    for ecid in pending:
        p = prrs[ecid]
        assert (p["SOFT_BIN"], p["HARD_BIN"], p["NUM_TEST"], p["TEST_T"]) == (ALARM_BIN, ALARM_BIN, 0, 0)
        assert int(p["PART_FLG"]) & stdf.PART_ABNORMAL_END
        assert int(p["PART_FLG"]) & stdf.PART_NO_PASS_FAIL
        # The site that raised the alarm was recorded with it (STDF SITE_NUM = site index + 1).
        (test,) = client.get(f"/v1/dashboard/dies/{ecid}", headers=headers).json()["tests"]
        assert test["provenance"] is not None and p["SITE_NUM"] == test["provenance"]["site"] + 1
    fault = prrs[retested]
    assert (fault["SOFT_BIN"], fault["NUM_TEST"], fault["TEST_T"]) == (12, 0, 0)
    assert int(fault["PART_FLG"]) == stdf.PART_FAILED
    (pcr,) = of_type(records, "PCR")
    assert (pcr["PART_CNT"], pcr["RTST_CNT"], pcr["ABRT_CNT"], pcr["GOOD_CNT"]) == (3, 1, 3, 0)
    (wrr,) = of_type(records, "WRR")
    assert (wrr["PART_CNT"], wrr["RTST_CNT"], wrr["ABRT_CNT"], wrr["GOOD_CNT"]) == (3, 1, 3, 0)

    # CSV: empty cells where nothing was measured.
    r = client.get(f"/v1/lots/{LOT}/dies.csv", headers=headers)
    assert r.status_code == 200, r.text
    rows = {row["ecid"]: row for row in csv.DictReader(io.StringIO(r.text))}
    for row in rows.values():
        assert row["accuracy_before"] == row["accuracy_after"] == row["test_time_s"] == ""
        assert row["reason"] and row["first_pass"] == "False"
    assert [rows[e]["soft_bin"] for e in faulty_lot] == ["12", "0", "0"]
    assert [rows[e]["passed"] for e in faulty_lot] == ["False", "", ""]
    assert [rows[e]["alarm_code"] for e in faulty_lot] == [
        "die_fault",
        "hardware_timeout",
        "hardware_timeout",
    ]
    assert [(rows[e]["n_tests"], rows[e]["n_alarms"]) for e in faulty_lot] == [
        ("2", "1"),
        ("1", "1"),
        ("1", "1"),
    ]

    # E142: the alarm bin is named for what it is; a picker does not take it.
    r = client.get(f"/v1/lots/{LOT}/wafers/1/e142", headers=headers)
    assert r.status_code == 200, r.text
    wafer_map = e142.read_e142(r.content)
    assert sorted(b for b in wafer_map.bins.values() if b is not None) == [0, 0, 12]
    assert (wafer_map.bin_info[0].name, wafer_map.bin_info[0].passed) == ("tester alarm (retest)", False)

    # Dashboard: yields count verdicts only; accuracy statistics hold no alarm.
    lot = client.get(f"/v1/dashboard/lots/{LOT}", headers=headers).json()
    assert (lot["n_tested"], lot["n_passed"], lot["yield_pct"]) == (1, 0, 0.0)
    y = lot["yields"]
    assert (y["n_first_tested"], y["n_first_passed"], y["first_pass_yield_pct"]) == (3, 0, 0.0)
    assert (y["n_retested"], y["n_alarms"], y["n_alarmed"], y["n_retest_pending"]) == (1, 3, 3, 2)
    assert lot["accuracy_before_pct"] == lot["accuracy_after_pct"] == []
    assert lot["accuracy_before_stats"]["n"] == lot["accuracy_after_stats"]["n"] == 0
    assert {b["soft_bin"]: b["count"] for b in lot["pareto"]} == {0: 2, 12: 1}
    (models,) = lot["models"]
    assert (models["n_tested"], models["n_passed"]) == (1, 0)  # the lot list's SQL agrees
    (listed,) = [
        row
        for row in client.get("/v1/dashboard/lots", headers=headers).json()["items"]
        if row["lot_id"] == LOT
    ]
    assert (listed["n_tested"], listed["yield_pct"], listed["first_pass_yield_pct"]) == (1, 0.0, 0.0)
    wafer = client.get(f"/v1/dashboard/lots/{LOT}/wafers/1", headers=headers).json()
    assert (wafer["n_tested"], wafer["yields"]["n_retest_pending"]) == (1, 2)
    assert all(d["accuracy_before_pct"] is None and d["test_time_s"] is None for d in wafer["dies"])

    die = client.get(f"/v1/dashboard/dies/{pending[0]}", headers=headers).json()
    (test,) = die["tests"]
    assert (test["accuracy_pct"], test["test_time_s"], test["passed"]) == (None, None, None)
    assert (test["soft_bin"], test["alarm_code"], test["step"]) == (0, "hardware_timeout", "characterize")
    assert test["provenance"] is not None and test["provenance"]["driver"] == "simulated"
    assert die["final"]["passed"] is None and die["final"]["soft_bin"] == 0

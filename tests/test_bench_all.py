"""``cimcal bench``: the one table of issue 12's figures, with the ratios it derives."""

from __future__ import annotations

import pytest

from app.cli import main
from bench.all import report


def test_report_derives_the_celery_ratio_and_names_the_missing_estimate_split() -> None:
    per_die = {
        "compensate_ms_median": 40.0,
        "bookkeeping_ms_median": 5.0,
        "compensate_plus_bookkeeping_ms_median": 45.0,
        "signature_record_ms_median": 4.0,
        "tester_s_per_die_functional_test": 0.07,
    }
    result = {
        "estimate": None,
        "compensate": {
            "characterize_host_ms_median (simulator + estimation)": 1300.0,
            "tester_s_per_die_characterize": 0.262,
            "per_die": per_die,
        },
        "throughput": [
            {"mode": "local-2", "dies": 24, "dies_per_s": 1.0},
            {"mode": "celery-1", "dies": 24, "dies_per_s": 0.8},
            {"mode": "celery-2", "dies": 24, "dies_per_s": 1.2},
        ],
        "api": {"rps_ratio": 0.5, "p99_ratio": 3.0},
    }
    text = "\n".join(report(result))
    assert "celery 2 workers / 1 worker" in text and " 1.5 " in text
    assert "estimation not split from the simulator" in text
    assert "image GET / healthz throughput" in text and " 0.5 " in text


def test_bench_all_with_every_part_skipped_prints_the_table_header(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "all", "--skip", "estimate,compensate,lot,local,celery,api"]) == 0
    out = capsys.readouterr().out
    assert "figure" in out and "target" in out and "seed 0" in out

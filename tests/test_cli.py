from __future__ import annotations

import pytest

from app.cli import BENCHMARKS, build_parser, main


def test_every_benchmark_has_a_module_with_main() -> None:
    import importlib

    for name in BENCHMARKS:
        assert callable(importlib.import_module(f"bench.{name}").main)


def test_bench_runs_a_benchmark_with_its_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "hal", "--vectors", "256", "--repeats", "1"]) == 0
    assert "vectors/s" in capsys.readouterr().out


def test_data_and_train_commands_parse() -> None:
    args = build_parser().parse_args(["data", "kws", "--clips-per-class", "3", "--force"])
    assert args.clips_per_class == 3 and args.force
    args = build_parser().parse_args(["train-reference", "--out", "/tmp/x", "--seed", "2"])
    assert str(args.out) == "/tmp/x" and args.seed == 2


def test_bench_exports_encodes_a_small_lot(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "exports", "--wafers", "1", "--dies-per-wafer", "20", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert '"dies": 20' in out and '"stdf_records"' in out

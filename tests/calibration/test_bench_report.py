"""The quality benchmark's report writers (the benchmark itself needs the KWS data: not run here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.quality_report import METHODS, render_section, summarize, write_figure, write_markdown


def _record(scale: float | str, die: int, acc: float) -> dict[str, object]:
    rec: dict[str, object] = {m: acc for m in METHODS}
    for m in METHODS:
        rec[f"{m}_tester_s"], rec[f"{m}_host_s"] = 0.262, 1.0
    rec.update(
        scale=scale,
        die=die,
        uncalibrated=acc / 2,
        baseline_a=acc - 0.1,
        baseline_b=acc - 0.03 - 0.01 * die,
        finetune=acc - 0.05,
        finetune_tester_s=2.4,
        read_vectors=131072,
        reads=64,
        writes=64,
        characterize_tester_s=0.262,
        characterize_compute_s=0.6,
        compensate_s=0.2,
        signature_bytes=290_000,
        functional_tester_s=0.01,
        cimcal_functional_tester_s=0.07,
        predicted_agreement=0.97,
        n_dead_cols=4,
        n_stuck_cells=100,
        calibratable=True,
    )
    return rec


def test_summary_markdown_and_figure(tmp_path: Path) -> None:
    records = [_record(s, d, 0.8 - 0.1 * s) for s in (1.0, 2.0) for d in range(3)]
    rows = summarize(records, ideal=0.9)
    assert [r["scale"] for r in rows] == [1.0, 2.0]
    assert abs(rows[0]["uncalibrated"]["mean"] - 0.35) < 1e-9 and rows[0]["finetune"]["n"] == 3
    # cimcal 0.7 on every die; the best competitor B: 0.66 mean, 0.65 worst die; ideal 0.9
    assert rows[0]["best_baseline"] == "baseline_b"
    assert abs(rows[0]["margin_mean"] - 0.04) < 1e-9 and abs(rows[0]["margin_min"] - 0.05) < 1e-9
    assert abs(rows[0]["cimcal_gap_mean"] - 0.2) < 1e-9 and rows[0]["meets_target"] is False
    result = {
        "config": {
            "command": "python -m bench.quality --dies 3",
            "workers": 2,
            "model": "m@1",
            "software_accuracy": 0.9,
            "ideal_accuracy": 0.9,
            "test_clips": 360,
            "calib_clips": 240,
            "tune_clips": 120,
            "budget": 131072,
            "finetune_budget_ratio": 10,
            "finetune_dies": 3,
            "budget_scale": 2.0,
            "budget_dies": 2,
            "n_macros": 32,
        },
        "summary": rows,
        "budget_curve": [
            {
                "budget": b,
                "accuracy_mean": 0.7,
                "accuracy_min": 0.6,
                "tester_s": 0.2,
                "signature_bytes": 9000,
                "cell_error_fraction": 0.0,
            }
            for b in (8192, 131072)
        ],
        "elapsed_s": 60.0,
    }
    md, png = tmp_path / "q.md", tmp_path / "q.png"
    write_markdown(result, md)
    write_figure(result, png)
    text = md.read_text()
    assert "| 1 | 3 | 90.0 | 35.0 / 35.0 | 60.0 / 60.0 | 66.0 / 65.0 | 65.0 / 65.0 | 70.0 / 70.0 |" in text
    assert "| 1 | B: two-point trim | 66.0 | 70.0 | +4.0 | +5.0 | 20.0 | 20.0 | no |" in text
    assert "| 1 | 0.26 / 1.0 | 0.26 / 1.0 | 0.26 / 1.0 | 2.40 / 1.0 | 0.26 / 1.0 | 0.26 / 1.0 |" in text
    assert "Fine-tuning used 9.2-9.2x cimcal's tester seconds" in text and "8192" in text
    assert png.stat().st_size > 10_000


def test_markdown_keeps_one_section_per_model(tmp_path: Path) -> None:
    """Rerunning one model replaces its section only; other models and text outside stay as they were."""

    def result(model: str, acc: float) -> dict[str, Any]:
        cfg = {
            "command": f"python -m bench.quality --model {model}",
            "workers": 2,
            "model": model,
            "software_accuracy": acc,
            "ideal_accuracy": acc,
            "test_clips": 450,
            "calib_clips": 269,
            "tune_clips": 120,
            "budget": 131072,
            "finetune_dies": 2,
            "data_note": f"Data of {model}.",
            "figure": f"quality-{model}.png",
        }
        records = [_record(1.0, d, acc) for d in range(2)]
        return {"config": cfg, "summary": summarize(records, ideal=acc), "elapsed_s": 60.0}

    md = tmp_path / "q.md"
    md.write_text("# Calibration quality benchmark\n\nIntro kept.\n")
    write_markdown(result("a@1", 0.8), md)
    write_markdown(result("b@1", 0.9), md)
    write_markdown(result("a@1", 0.7), md)
    text = md.read_text()
    assert text.startswith("# Calibration quality benchmark\n\nIntro kept.\n")
    assert text.count("<!-- bench.quality: a@1 -->") == text.count("<!-- /bench.quality: a@1 -->") == 1
    assert text.index("## `a@1`") < text.index("## `b@1`")
    assert "| 1 | 2 | 70.0 |" in text and "| 1 | 2 | 80.0 |" not in text and "| 1 | 2 | 90.0 |" in text
    assert "Data of b@1." in text and "(quality-a@1.png)" in text


def test_corner_rows_keep_the_order_they_ran_in(tmp_path: Path) -> None:
    records = [_record(c, d, 0.88) for c in ("typical", "slow", "aggressive") for d in range(2)]
    rows = summarize(records, ideal=0.89)
    assert [r["scale"] for r in rows] == ["typical", "slow", "aggressive"]
    assert all(r["meets_target"] for r in rows)  # 1 point below the ideal chip on every die
    result = {
        "config": {
            "command": "python -m bench.quality --dies 2",
            "workers": 2,
            "model": "m@1",
            "software_accuracy": 0.9,
            "ideal_accuracy": 0.89,
            "test_clips": 360,
            "calib_clips": 240,
            "tune_clips": 480,
            "budget": 131072,
            "driver": {"name": "simulated", "options": {}, "scale_option": "corner"},
        },
        "summary": rows,
        "elapsed_s": 60.0,
    }
    text = "\n".join(render_section(result))
    assert "### Accuracy by `corner`" in text and "| slow | 2 | 89.0 |" in text
    png = tmp_path / "q.png"
    write_figure(result, png)
    assert png.stat().st_size > 10_000

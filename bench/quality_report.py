"""The quality benchmark's report: summary rows, the markdown section of a model in
docs/quality.md, and the figure.

docs/quality.md holds one section per model, each between ``<!-- bench.quality: MODEL -->`` and
``<!-- /bench.quality: MODEL -->`` (``MODEL on DRIVER`` for a driver other than the simulated
fleet); :func:`write_markdown` replaces its section and keeps the others (and any text outside the
sections). A row is one variation scale, or the driver's one configuration when no option is
scaled (``scale`` None); methods a run did not measure (the ORACLE on a driver without an oracle)
have no column.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.quality_data import KWS_COMPARISON, kws_data_note
from bench.quality_dies import FLEET_SEED

METHODS = ("uncalibrated", "baseline_a", "baseline_b", "cimcal", "cimcal_fast", "oracle")
LABELS = {
    "ideal": "ideal chip",
    "uncalibrated": "uncalibrated",
    "baseline_a": "A: offset only",
    "baseline_b": "B: column scaling",
    "cimcal": "cimcal",
    "cimcal_fast": "cimcal fast path",
    "oracle": "ORACLE",
    "finetune": "fine-tuning (die in loop)",
}
TITLE = "# Calibration quality benchmark\n"


def _stats(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}


def _scale_key(scale: float | None) -> tuple[bool, float]:
    return (scale is None, 0.0 if scale is None else float(scale))


def scale_label(scale: float | None) -> str:
    return "-" if scale is None else f"{scale:g}"


def methods_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The methods every row measured, in :data:`METHODS` order."""
    return [m for m in METHODS if rows and all(m in r for r in rows)]


def summarize(records: list[dict[str, Any]], ideal: float) -> list[dict[str, Any]]:
    """One row per scale: accuracy statistics per method, costs per die."""
    rows = []
    for scale in sorted({r["scale"] for r in records}, key=_scale_key):
        rs = [r for r in records if r["scale"] == scale]
        row: dict[str, Any] = {"scale": scale, "dies": len(rs), "ideal": {"mean": ideal, "min": ideal}}
        for m in METHODS:
            if all(m in r for r in rs):
                row[m] = _stats([r[m] for r in rs])
        ft = [r for r in rs if "finetune" in r]
        if ft:
            row["finetune"] = _stats([r["finetune"] for r in ft])
            row["finetune_cimcal_same_dies"] = _stats([r["cimcal"] for r in ft])
            row["finetune_tester_s"] = _stats([r["finetune_tester_s"] for r in ft])
            row["finetune_wall_s"] = _stats([r["finetune_wall_s"] for r in ft])
        for key in (
            "read_vectors",
            "reads",
            "writes",
            "characterize_tester_s",
            "characterize_compute_s",
            "compensate_s",
            "compensate_fast_s",
            "signature_bytes",
            "functional_tester_s",
            "cimcal_functional_tester_s",
            "predicted_agreement",
            "n_dead_cols",
            "n_stuck_cells",
        ):
            row[key] = _stats([float(r[key]) for r in rs])
        row["cimcal_time_s"] = _stats(
            [r["characterize_tester_s"] + r["characterize_compute_s"] + r["compensate_s"] for r in rs]
        )
        row["not_calibratable"] = int(sum(not r["calibratable"] for r in rs))
        rows.append(row)
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _markers(key: str) -> tuple[str, str]:
    return f"<!-- bench.quality: {key} -->", f"<!-- /bench.quality: {key} -->"


def section_key(cfg: dict[str, Any]) -> str:
    """The model, plus ``on DRIVER`` for a driver other than the simulated fleet."""
    driver = (cfg.get("driver") or {}).get("name", "simulated")
    return cfg["model"] if driver == "simulated" else f"{cfg['model']} on {driver}"


def write_markdown(result: dict[str, Any], path: Path) -> None:
    """Write the run's section into ``path``, replacing its previous section and keeping the rest."""
    begin, end = _markers(section_key(result["config"]))
    section = "\n".join([begin, *render_section(result), end])
    text = path.read_text() if path.exists() else TITLE
    found = re.search(re.escape(begin) + r".*?" + re.escape(end), text, flags=re.S)
    if found:
        text = text[: found.start()] + section + text[found.end() :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def render_section(result: dict[str, Any]) -> list[str]:
    """The markdown lines of one model's results (older result files lack the per-model notes: they
    are the KWS model's)."""
    rows = result["summary"]
    cfg = result["config"]
    kws = cfg["model"] == "kws-bnn@1"
    data_note = cfg.get("data_note") or kws_data_note(
        cfg["test_clips"], cfg["calib_clips"], cfg["tune_clips"]
    )
    comparison = cfg.get("comparison_note", KWS_COMPARISON if kws else "")
    samples = cfg.get("sample_word", "clips")
    driver = cfg.get("driver") or {"name": "simulated"}
    simulated = driver["name"] == "simulated"
    methods = methods_of(rows)
    if simulated:
        where = f"Simulated fleet seed {cfg.get('fleet_seed', FLEET_SEED)}; dies spread over a wafer."
        by = "variation scale"
    else:
        opts = json.dumps(driver.get("options") or {}, sort_keys=True)
        where = (
            f"Driver `{driver['name']}` {driver.get('version', '')} with options `{opts}`"
            + (f", scaling `{driver['scale_option']}`" if driver.get("scale_option") else "")
            + "; dies spread over a wafer."
            + ("" if "oracle" in methods else " The driver offers no oracle: no ORACLE column.")
        )
        by = f"`{driver['scale_option']}`" if driver.get("scale_option") else "driver configuration"
    col = "scale" if simulated else (driver.get("scale_option") or "configuration")
    lines = [
        f"## `{section_key(cfg)}`",
        "",
        f"Produced by `{cfg['command']}` in {result['elapsed_s'] / 60:.1f} min on {cfg['workers']} worker "
        f"process(es). Model `{cfg['model']}` (software accuracy {_pct(cfg['software_accuracy'])} % on the "
        f"same {samples}). {data_note} {where} Characterization budget {cfg['budget']} read vectors per "
        "die. Figures: accuracy in %, mean / min over the dies.",
        "",
        f"### Accuracy by {by}",
        "",
        f"| {col} | dies | ideal chip | " + " | ".join(LABELS[m] for m in methods) + " |",
        "| ---: | ---: | ---: |" + " ---: |" * len(methods),
    ]
    for r in rows:
        cells = [scale_label(r["scale"]), str(r["dies"]), _pct(r["ideal"]["mean"])]
        cells += [f"{_pct(r[m]['mean'])} / {_pct(r[m]['min'])}" for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    unc = [r["uncalibrated"]["mean"] for r in rows]
    cim = [r["cimcal"]["mean"] for r in rows]
    ideal = rows[0]["ideal"]["mean"] if rows else 0.0
    lines += [
        "",
        f"Uncalibrated mean accuracy spans {_pct(min(unc))}-{_pct(max(unc))} %; after cimcal "
        f"{_pct(min(cim))}-{_pct(max(cim))} % (worst die {_pct(min(r['cimcal']['min'] for r in rows))} %), "
        f"against {_pct(ideal)} % for the ideal chip. {comparison}"
        + (
            "The ORACLE (the same compensation fed the simulator's hidden truth) is the upper bound of the "
            "compensation; what separates it from the ideal chip is read noise, redrawn on every read. "
            if "oracle" in methods
            else ""
        )
        + "The fast path (no per-cell terms, no tile copies) shows what the copies of the row tiles on idle "
        "macros buy.",
    ]
    lines += [
        "",
        "### Cost per die (cimcal)",
        "",
        f"| {col} | read vectors | read calls | macro writes | characterization tester s | "
        "estimation host s | compensation ms (fast path ms) | signature bytes | functional test tester s | "
        "predicted agreement |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {scale_label(r['scale'])} | {r['read_vectors']['mean']:.0f} | {r['reads']['mean']:.0f} | "
            f"{r['writes']['mean']:.0f} | {r['characterize_tester_s']['mean']:.3f} | "
            f"{r['characterize_compute_s']['mean']:.2f} | {1e3 * r['compensate_s']['mean']:.0f} "
            f"({1e3 * r['compensate_fast_s']['mean']:.0f}) | {r['signature_bytes']['mean']:.0f} | "
            f"{r['cimcal_functional_tester_s']['mean']:.3f} | {r['predicted_agreement']['mean']:.4f} |"
        )
    if any("finetune" in r for r in rows):
        lines += [
            "",
            "### Fine-tuning with the die in the loop vs cimcal (same dies)",
            "",
            f"Greedy threshold search, {cfg['finetune_evals']} network evaluations of {cfg['tune_clips']} {samples} "
            f"each, on the first {cfg['finetune_dies']} dies of each scale, against cimcal on the same dies. "
            "Tester seconds: fine-tuning's programming and inference runs vs cimcal's characterization (the "
            "functional test is the same for both). Host seconds: cimcal's estimation and compensation vs the "
            "fine-tuning loop (which, on the simulator, includes simulating the chip).",
            "",
            "| scale | dies | fine-tuning acc | cimcal acc | acc ratio (ft / cimcal) | fine-tuning tester s | "
            "cimcal tester s | tester ratio (ft / cimcal) | fine-tuning host s | cimcal host s |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            if "finetune" not in r:
                continue
            ft, cm = r["finetune"]["mean"], r["finetune_cimcal_same_dies"]["mean"]
            t_ft, t_cm = r["finetune_tester_s"]["mean"], r["characterize_tester_s"]["mean"]
            h_ft = r["finetune_wall_s"]["mean"]
            h_cm = r["characterize_compute_s"]["mean"] + r["compensate_s"]["mean"]
            lines.append(
                f"| {scale_label(r['scale'])} | {r['finetune']['n']} | {_pct(ft)} | {_pct(cm)} | {ft / cm:.2f} | "
                f"{t_ft:.2f} | {t_cm:.3f} | {t_ft / t_cm:.1f} | {h_ft:.1f} | {h_cm:.2f} |"
            )
    curve = result.get("budget_curve") or []
    if curve:
        lines += [
            "",
            f"### Recovered accuracy vs read vectors per die (scale {scale_label(cfg['budget_scale'])}, "
            f"{cfg['budget_dies']} dies)",
            "",
            "| read vectors / die | per macro and pattern | tester s | accuracy mean / min | signature bytes | "
            "per-cell errors kept |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in curve:
            lines.append(
                f"| {c['budget']} | {c['budget'] // (2 * cfg['n_macros'])} | {c['tester_s']:.3f} | "
                f"{_pct(c['accuracy_mean'])} / {_pct(c['accuracy_min'])} | {c['signature_bytes']:.0f} | "
                f"{c['cell_error_fraction']:.0%} |"
            )
    if curve:
        accs = [c["accuracy_mean"] for c in curve]
        lines += [
            "",
            f"Mean accuracy stays within {_pct(min(accs))}-{_pct(max(accs))} % over the whole sweep: gain and "
            "offset need only a few reads per macro to be pinned well below the read noise (whose size also "
            "sets the precision they need, so the number of reads does not grow with the variation), and the "
            "tester time of characterization grows slowly with the budget: its pattern writes are a fixed cost "
            "(2 broadcast writes since issue 12; 64 single writes, 0.128 s, on a tester without). Larger budgets "
            "buy stuck-cell detection at high variation and, from ~65k vectors, per-cell errors (worth 0 to "
            "0.7 points in the ablations of docs/calibration.md, within their run-to-run noise).",
        ]
    lines += ["", f"![quality of {cfg['model']}]({cfg.get('figure', 'quality.png')})"]
    return lines


def write_figure(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["summary"]
    curve = result.get("budget_curve") or []
    fig, axes = plt.subplots(1, 2 if curve else 1, figsize=(12 if curve else 7, 4.5), squeeze=False)
    ax = axes[0, 0]
    scales = [float(i) if r["scale"] is None else r["scale"] for i, r in enumerate(rows)]
    ax.plot(scales, [100 * r["ideal"]["mean"] for r in rows], "k--", label=LABELS["ideal"])
    styles = dict(zip(METHODS, ("o-", "s-", "^-", "D-", "v:", "x--"), strict=True))
    for m in methods_of(rows):
        style = styles[m]
        mean = np.array([100 * r[m]["mean"] for r in rows])
        low = np.array([100 * r[m]["min"] for r in rows])
        ax.errorbar(
            scales, mean, yerr=[mean - low, np.zeros_like(mean)], fmt=style, capsize=3, label=LABELS[m]
        )
    driver = result["config"].get("driver") or {"name": "simulated"}
    scale_name = "variation scale" if driver["name"] == "simulated" else driver.get("scale_option")
    ax.set_xlabel(scale_name or f"driver {driver['name']}")
    ax.set_ylabel("test accuracy, % (bar: minimum die)")
    ax.set_title(f"{result['config'].get('model', '')}: accuracy by variation scale")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    if curve:
        ax = axes[0, 1]
        x = [c["budget"] for c in curve]
        ax.semilogx(x, [100 * c["accuracy_mean"] for c in curve], "D-", label="cimcal, mean")
        ax.semilogx(x, [100 * c["accuracy_min"] for c in curve], "D:", label="cimcal, min")
        ax.axhline(100 * result["config"]["ideal_accuracy"], color="k", ls="--", label="ideal chip")
        at = [r for r in rows if r["scale"] == result["config"]["budget_scale"]]
        if at:
            ax.axhline(100 * at[0]["uncalibrated"]["mean"], color="C0", ls=":", label="uncalibrated, mean")
        ax.set_ylim(0, 100)
        ax.set_xlabel("read vectors per die")
        ax.set_ylabel("test accuracy, %")
        ax.set_title(f"budget sweep at scale {scale_label(result['config']['budget_scale'])}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

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

METHODS = ("uncalibrated", "baseline_a", "baseline_b", "finetune", "cimcal", "oracle")
BASELINES = ("uncalibrated", "baseline_a", "baseline_b", "finetune")
"""The competitors cimcal's margin is taken over (the ORACLE is an upper bound, not a competitor)."""
LABELS = {
    "ideal": "ideal chip",
    "uncalibrated": "uncalibrated",
    "baseline_a": "A: offset only",
    "baseline_b": "B: two-point trim",
    "finetune": "fine-tuning",
    "cimcal": "cimcal",
    "oracle": "ORACLE",
}
MEAN_GAP = 0.02
WORST_GAP = 0.05
"""What cimcal should reach at every corner: mean within 2 points of the ideal chip, worst die within 5."""
TITLE = "# Calibration quality benchmark\n"


def _stats(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}


def scale_label(scale: float | str | None) -> str:
    if scale is None:
        return "-"
    return scale if isinstance(scale, str) else f"{scale:g}"


def methods_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The methods every row measured, in :data:`METHODS` order."""
    return [m for m in METHODS if rows and all(m in r for r in rows)]


COST_KEYS = (
    "read_vectors",
    "reads",
    "writes",
    "characterize_tester_s",
    "characterize_compute_s",
    "compensate_s",
    "signature_bytes",
    "functional_tester_s",
    "cimcal_functional_tester_s",
    "predicted_agreement",
    "n_dead_cols",
    "n_stuck_cells",
)


def summarize(records: list[dict[str, Any]], ideal: float) -> list[dict[str, Any]]:
    """One row per setting (corner, scale or the driver's one configuration), in the order the
    records first name them: accuracy statistics and tester / host seconds per method, costs per
    die, and cimcal's margin over the best baseline."""
    rows = []
    for scale in list(dict.fromkeys(r["scale"] for r in records)):
        rs = [r for r in records if r["scale"] == scale]
        row: dict[str, Any] = {"scale": scale, "dies": len(rs), "ideal": {"mean": ideal, "min": ideal}}
        for m in METHODS:
            if all(m in r for r in rs):
                row[m] = _stats([r[m] for r in rs])
                for cost in ("tester_s", "host_s"):
                    if all(f"{m}_{cost}" in r for r in rs):
                        row[f"{m}_{cost}"] = _stats([r[f"{m}_{cost}"] for r in rs])
        for key in COST_KEYS:
            if all(key in r for r in rs):
                row[key] = _stats([float(r[key]) for r in rs])
        row["not_calibratable"] = int(sum(not r.get("calibratable", True) for r in rs))
        competitors = [m for m in BASELINES if m in row]
        if "cimcal" in row and competitors:
            best = max(competitors, key=lambda m: row[m]["mean"])
            row["best_baseline"] = best
            row["margin_mean"] = row["cimcal"]["mean"] - row[best]["mean"]
            row["margin_min"] = row["cimcal"]["min"] - max(row[m]["min"] for m in competitors)
            row["cimcal_gap_mean"] = ideal - row["cimcal"]["mean"]
            row["cimcal_gap_worst"] = ideal - row["cimcal"]["min"]
            row["meets_target"] = bool(
                row["cimcal_gap_mean"] <= MEAN_GAP + 1e-9 and row["cimcal_gap_worst"] <= WORST_GAP + 1e-9
            )
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


def _pp(x: float) -> str:
    return f"{100 * x:+.1f}"


def _duration(result: dict[str, Any], cfg: dict[str, Any]) -> str:
    """How long the run took, or, for a run cut short, how many dies of each row it finished."""
    partial = cfg.get("partial")
    if result.get("elapsed_s") is None or partial:
        done = ", ".join(f"{k} {v}" for k, v in (partial or {}).items())
        return (
            f"**cut short** (dies finished per row: {done}; of {cfg['dies']} asked; rendered from the dies it "
            "kept with `--from-partial`)"
        )
    return f"in {result['elapsed_s'] / 60:.1f} min"


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
    option = driver.get("scale_option")
    if simulated:
        where = f"Simulated fleet seed {cfg.get('fleet_seed', FLEET_SEED)}; dies spread over a wafer."
    else:
        opts = json.dumps(driver.get("options") or {}, sort_keys=True)
        where = (
            f"Driver `{driver['name']}` {driver.get('version', '')} with options `{opts}`"
            + (f", setting `{option}`" if option else "")
            + "; dies spread over a wafer."
            + ("" if "oracle" in methods else " The driver offers no oracle: no ORACLE column.")
        )
    col = option or "configuration"
    by = f"`{option}`" if option else "driver configuration"
    replicas = cfg.get("replicas")
    lines = [
        f"## `{section_key(cfg)}`",
        "",
        f"Produced by `{cfg['command']}` {_duration(result, cfg)} on {cfg['workers']} worker "
        f"process(es); seed {cfg.get('seed', 0)} (data subsets, activation statistics), fleet seed "
        f"{cfg.get('fleet_seed', FLEET_SEED)}, die seeds from both. Model `{cfg['model']}` (software accuracy "
        f"{_pct(cfg['software_accuracy'])} % on the same {samples}). {data_note} {where} Characterization "
        f"budget {cfg['budget']} read vectors per die. Figures: accuracy in %, mean / min over the dies.",
        "",
        "Every method runs with the same copies of the model's row tiles on idle macros"
        + (f" ({replicas} copies)" if replicas else "")
        + " and, except uncalibrated, the same signature (cimcal's characterization). A and B set only "
        "the thresholds, from the signature's offsets (A) or gains and offsets (B, the two-point trim); "
        "fine-tuning starts from B and learns every channel's threshold by gradient descent through a "
        "surrogate of the die fitted from its own reads of the calibration set, with the die in the loop "
        f"between rounds, given {cfg.get('finetune_budget_ratio', 10):g}x cimcal's characterization tester "
        "time (app/calibration/finetune.py); the ORACLE is cimcal's compensation fed the simulator's hidden "
        "truth of every term the signature models (a reference, not a competitor).",
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
        f"against {_pct(ideal)} % for the ideal chip. {comparison}".rstrip(),
    ]
    if any("best_baseline" in r for r in rows):
        lines += [
            "",
            "### cimcal against the best baseline, and against the ideal chip",
            "",
            f"Target: cimcal's mean within {100 * MEAN_GAP:.0f} points of the ideal chip and its worst die "
            f"within {100 * WORST_GAP:.0f}. Margin: cimcal minus the best competitor (uncalibrated, A, B or "
            "fine-tuning; the ORACLE is not one), on the mean and on the worst die. Points.",
            "",
            f"| {col} | best baseline | its mean | cimcal mean | margin (mean) | margin (worst die) | "
            "ideal - cimcal (mean) | ideal - cimcal (worst die) | target met |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
        ]
        for r in rows:
            if "best_baseline" not in r:
                continue
            best = r["best_baseline"]
            lines.append(
                f"| {scale_label(r['scale'])} | {LABELS[best]} | {_pct(r[best]['mean'])} | "
                f"{_pct(r['cimcal']['mean'])} | {_pp(r['margin_mean'])} | {_pp(r['margin_min'])} | "
                f"{100 * r['cimcal_gap_mean']:.1f} | {100 * r['cimcal_gap_worst']:.1f} | "
                f"{'yes' if r['meets_target'] else 'no'} |"
            )
    costed = [m for m in methods if all(f"{m}_tester_s" in r for r in rows)]
    if costed:
        lines += [
            "",
            "### Tester and host seconds per die",
            "",
            "Tester seconds each method spends on the die before the functional test (the same "
            f"{rows[0]['functional_tester_s']['mean']:.3f} s for every method): characterization for A, B and "
            "cimcal; characterization plus the fine-tuning passes for fine-tuning. Host seconds: estimation "
            "and the method's own compute (fine-tuning's includes simulating the die's reads, which a real "
            "tester does in its tester seconds). Mean per die, tester s / host s.",
            "",
            f"| {col} | " + " | ".join(LABELS[m] for m in costed) + " |",
            "| ---: |" + " ---: |" * len(costed),
        ]
        for r in rows:
            cells = [scale_label(r["scale"])]
            cells += [f"{r[f'{m}_tester_s']['mean']:.2f} / {r[f'{m}_host_s']['mean']:.1f}" for m in costed]
            lines.append("| " + " | ".join(cells) + " |")
        if "finetune" in costed:
            ratio = [r["finetune_tester_s"]["mean"] / r["cimcal_tester_s"]["mean"] for r in rows]
            lines += [
                "",
                f"Fine-tuning used {min(ratio):.1f}-{max(ratio):.1f}x cimcal's tester seconds (its budget: "
                f"{cfg.get('finetune_budget_ratio', 10):g}x cimcal's characterization on top of it; a pass "
                f"through the die costs what it costs, and a pass that would overrun the budget is not made) "
                f"and tunes on {cfg['tune_clips']} {samples} disjoint from the functional test's.",
            ]
    lines += [
        "",
        "### Cost per die (cimcal)",
        "",
        f"| {col} | read vectors | read calls | macro writes | characterization tester s | "
        "estimation host s | compensation ms | signature bytes | functional test tester s | "
        "predicted agreement |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {scale_label(r['scale'])} | {r['read_vectors']['mean']:.0f} | {r['reads']['mean']:.0f} | "
            f"{r['writes']['mean']:.0f} | {r['characterize_tester_s']['mean']:.3f} | "
            f"{r['characterize_compute_s']['mean']:.2f} | {1e3 * r['compensate_s']['mean']:.0f} | "
            f"{r['signature_bytes']['mean']:.0f} | "
            f"{r['cimcal_functional_tester_s']['mean']:.3f} | {r['predicted_agreement']['mean']:.4f} |"
        )
    curve = result.get("budget_curve") or []
    if curve:
        lines += [
            "",
            f"### Recovered accuracy vs read vectors per die ({col} {scale_label(cfg['budget_scale'])}, "
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
    xs = np.arange(len(rows), dtype=np.float64)
    ax.plot(xs, [100 * r["ideal"]["mean"] for r in rows], "k--", label=LABELS["ideal"])
    styles = dict(zip(METHODS, ("o-", "s-", "^-", "P-", "D-", "x--"), strict=True))
    shown = methods_of(rows)
    for k, m in enumerate(shown):
        mean = np.array([100 * r[m]["mean"] for r in rows])
        low = np.array([100 * r[m]["min"] for r in rows])
        ax.errorbar(
            xs + 0.04 * (k - len(shown) / 2),
            mean,
            yerr=[mean - low, np.zeros_like(mean)],
            fmt=styles[m],
            capsize=3,
            label=LABELS[m],
        )
    driver = result["config"].get("driver") or {"name": "simulated"}
    option = driver.get("scale_option") or "configuration"
    ax.set_xticks(xs, [scale_label(r["scale"]) for r in rows])
    ax.set_xlabel(option)
    ax.set_ylabel("test accuracy, % (bar: minimum die)")
    ax.set_title(f"{result['config'].get('model', '')}: accuracy by {option}")
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
        ax.set_title(f"budget sweep at {option} {scale_label(result['config']['budget_scale'])}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""Quality benchmark: accuracy of dies before and after calibration, against baselines.

For every variation scale, ``dies`` dies of the simulated fleet (or of any registered driver:
``--driver NAME --driver-options JSON``) are each measured with:

* ideal chip      : the program on a variation-free chip (same for every die);
* uncalibrated    : the ideal image programmed as is;
* baseline A      : offset-only threshold shift (from the cimcal signature);
* baseline B      : per-column output scaling as aihwkit's drift compensation (from the signature);
* cimcal          : characterization (default budget) + compensation (production setting);
* cimcal fast     : the same signature, compensation without per-cell terms and without copies;
* ORACLE          : cimcal's compensation fed the simulator's hidden truth (upper bound; only on a
                    driver that offers an oracle, see :func:`bench.oracle.oracle_for`);
* fine-tuning     : (first ``finetune_dies`` dies per scale) die-in-the-loop threshold search.

``--model`` picks the model and its data (:mod:`bench.quality_data`): ``kws-bnn@1`` (default:
class-stratified subsets of the held-out test speakers, activation statistics and fine-tuning from
the validation speakers) or ``digits-bnn@1`` (its registered ``digits-test@1`` and
``digits-calib@1``). A budget sweep (accuracy vs read vectors per die) runs at one scale. The dies
run in ``workers`` processes with single-threaded BLAS (:mod:`bench.quality_dies`); the report is
:mod:`bench.quality_report`.

On another driver the scales set the option ``--scale-option`` names (``variation_scale`` on the
simulated fleet); without one the driver runs once, with its options as given, and the report has
one row; its section of docs/quality.md is ``MODEL on DRIVER`` and its figure
``docs/quality-...-DRIVER.png``. The run ends by printing its section.

Run: ``python -m bench.quality --dies 20 --json /tmp/quality.json`` (writes the model's section of
docs/quality.md and its figure too); on a vendor's driver: ``cimcal bench quality --driver acme
--driver-options '{"resource": "TCPIP0::10.0.0.5::INSTR"}' --model digits-bnn@1 --dies 4``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.calibration.baselines import uncalibrated_image
from app.calibration.characterize import DEFAULT_BUDGET, characterize
from app.calibration.compensate import CompensationConfig
from app.calibration.pipeline import ModelContext, compensate
from bench.quality_data import DEFAULT_MODEL, MODELS, BenchData, load_bench_data
from bench.quality_dies import (
    ABLATIONS,
    FAST,
    FLEET_SEED,
    SIMULATED,
    DriverSpec,
    ablation_task,
    budget_task,
    die_address,
    die_driver,
    die_task,
    worker_pool,
)
from bench.quality_report import METHODS, render_section, summarize, write_figure, write_markdown
from hardware.chip import ChipGeometry, execute_network, ideal_readout

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCALES = (2.5, 3.5, 4.5, 5.5)
DEFAULT_BUDGETS = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)

__all__ = [
    "DEFAULT_BUDGETS",
    "DEFAULT_SCALES",
    "METHODS",
    "MODELS",
    "main",
    "run_ablation",
    "run_quality_bench",
    "run_timing",
    "summarize",
    "write_figure",
    "write_markdown",
]


def _load(
    model: str,
    model_path: str | Path | None,
    seed: int,
    test_clips: int | None = None,
    calib_clips: int | None = None,
    tune_clips: int | None = None,
) -> tuple[BenchData, ModelContext]:
    """The model's data with its default sizes where a size is None."""
    m = MODELS[model]
    return load_bench_data(
        test_clips if test_clips is not None else m.test_clips,
        calib_clips if calib_clips is not None else m.calib_clips,
        tune_clips if tune_clips is not None else m.tune_clips,
        seed,
        Path(model_path) if model_path else None,
        model,
    )


def _row_scales(
    spec: DriverSpec, scales: Sequence[float] | None, default: Sequence[float]
) -> tuple[float | None, ...]:
    """The rows' scales: the given ones (or ``default``) where the spec scales an option, else one row."""
    if not spec.has_scales:
        if scales:
            raise ValueError(f"driver {spec.name!r}: --scales needs --scale-option (the option they set)")
        return (None,)
    return tuple(float(s) for s in (scales or default))


def run_timing(
    model_path: str | Path | None = None,
    log: Callable[[str], None] = print,
    *,
    model: str = DEFAULT_MODEL,
    driver: DriverSpec | None = None,
) -> dict[str, float]:
    """Host seconds of each step in this process (single-threaded BLAS recommended)."""
    spec = driver or DriverSpec()
    data, ctx = _load(model, model_path, 0)
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    ModelContext.build(data.program, data.tune_x)
    out[f"model_context_build_{data.tune_y.size}_clips_s"] = time.perf_counter() - t0
    drv = die_driver(4.5 if spec.has_scales else None, 0, spec)
    addr = die_address(99, 0)
    drv.probe(addr)
    for budget in (4096, 16384, DEFAULT_BUDGET):
        res = [characterize(drv, budget=budget, rng=i) for i in range(3)]
        out[f"estimate_{budget}_s"] = min(r.compute_s for r in res)
        for name, cfg in (("full", CompensationConfig()), ("fast", FAST)):
            out[f"compensate_{budget}_{name}_s"] = min(
                compensate(ctx, res[0].signature, addr.ecid, config=cfg).compute_s for _ in range(5)
            )
    for k, v in out.items():
        log(f"{k}: {1e3 * v:.0f} ms")
    return out


def run_ablation(
    dies: int = 4,
    scales: Sequence[float] | None = None,
    *,
    test_clips: int | None = None,
    workers: int = 2,
    model_path: str | Path | None = None,
    model: str = DEFAULT_MODEL,
    seed: int = 0,
    driver: DriverSpec | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Accuracy and measured activation agreement of compensation variants (same signatures)."""
    spec = driver or DriverSpec()
    data, _ = _load(model, model_path, seed, test_clips)
    scale_list = list(_row_scales(spec, scales, (3.5, 5.5)))
    with worker_pool(data, workers, spec) as pool:
        futs = [
            pool.submit(ablation_task, 90 + si, sc, d)
            for si, sc in enumerate(scale_list)
            for d in range(dies)
        ]
        recs = [f.result() for f in futs]
    table: dict[str, Any] = {}
    for name in ABLATIONS:
        for sc in scale_list:
            rs = [r[name] for r in recs if r["scale"] == sc]
            table.setdefault(name, {})["-" if sc is None else f"{sc:g}"] = {
                k: float(np.mean([r[k] for r in rs])) for k in ("accuracy", "agreement", "predicted")
            }
    lines = [
        "| variant | "
        + " | ".join(f"scale {sc}: accuracy / disagreement" for sc in table[next(iter(table))])
        + " |"
    ]
    lines.append("| --- |" + " ---: |" * len(scale_list))
    for name, by_scale in table.items():
        cells = [
            f"{100 * v['accuracy']:.1f} % / {100 * (1 - v['agreement']):.2f} %" for v in by_scale.values()
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    log("\n".join(lines))
    return {"table": table, "dies": recs, "markdown": "\n".join(lines)}


def _budget_curve(sweep: list[dict[str, Any]], budgets: Sequence[int]) -> list[dict[str, Any]]:
    curve = []
    for b in budgets:
        rs = [r for r in sweep if r["budget"] == b]
        if rs:
            curve.append(
                {
                    "budget": int(b),
                    "accuracy_mean": float(np.mean([r["accuracy"] for r in rs])),
                    "accuracy_min": float(np.min([r["accuracy"] for r in rs])),
                    "tester_s": float(np.mean([r["tester_s"] for r in rs])),
                    "compute_s": float(np.mean([r["compute_s"] for r in rs])),
                    "signature_bytes": float(np.mean([r["signature_bytes"] for r in rs])),
                    "cell_error_fraction": float(np.mean([r["has_cell_error"] for r in rs])),
                    "dies": len(rs),
                }
            )
    return curve


def run_quality_bench(
    dies: int = 20,
    json_path: str | Path | None = None,
    scales: Sequence[float] | None = None,
    *,
    model: str = DEFAULT_MODEL,
    test_clips: int | None = None,
    calib_clips: int | None = None,
    tune_clips: int | None = None,
    finetune_dies: int = 4,
    finetune_evals: int = 40,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    budget_dies: int = 6,
    budget_scale: float | None = None,
    workers: int = 2,
    md_path: str | Path | None = ROOT / "docs" / "quality.md",
    png_path: str | Path | None = None,
    model_path: str | Path | None = None,
    seed: int = 0,
    command: str | None = None,
    driver: DriverSpec | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the benchmark for ``model`` on ``driver`` (default: the simulated fleet); returns the
    result dict (also written to ``json_path``, the run's section of ``md_path`` and its figure,
    ``png_path`` or docs/<the model's figure>, when those paths are not None). Subset sizes left None
    are the model's defaults (:data:`bench.quality_data.MODELS`)."""
    t_start = time.perf_counter()
    spec = MODELS[model]
    drv_spec = driver or DriverSpec()
    row_scales = _row_scales(drv_spec, scales, DEFAULT_SCALES)
    data, _ = _load(model, model_path, seed, test_clips, calib_clips, tune_clips)
    probe = drv_spec.build(row_scales[0], 0)
    g = probe.geometry()
    probe.close()
    if g != ChipGeometry():
        log(f"warning: driver {drv_spec.name} has geometry {g}; the activation statistics assume the default")
    ideal_img = uncalibrated_image(data.program, g)
    ideal = float(
        (
            execute_network(ideal_img, data.test_x, ideal_readout(ideal_img.macros, g)).argmax(axis=1)
            == data.test_y
        ).mean()
    )
    log(f"model {data.model_name}: ideal chip {ideal:.3f}, software {data.software_accuracy:.3f}")
    if budget_scale is None:
        budget_scale = row_scales[len(row_scales) // 2]
    elif not drv_spec.has_scales:
        raise ValueError(f"driver {drv_spec.name!r}: budget_scale needs a scale option")
    tasks: list[tuple[str, tuple[Any, ...]]] = []
    for si, scale in enumerate(row_scales):
        for d in range(dies):
            tasks.append(("die", (si, scale, d, finetune_evals if d < finetune_dies else 0)))
    si_budget = row_scales.index(budget_scale) if budget_scale in row_scales else len(row_scales)
    for b in budgets:
        for d in range(budget_dies):
            tasks.append(("budget", (si_budget, budget_scale, d, int(b))))
    records: list[dict[str, Any]] = []
    sweep: list[dict[str, Any]] = []
    with worker_pool(data, workers, drv_spec) as pool:
        futures = [
            (kind, pool.submit(die_task if kind == "die" else budget_task, *args)) for kind, args in tasks
        ]
        for i, (kind, fut) in enumerate(futures):
            rec = fut.result()
            (records if kind == "die" else sweep).append(rec)
            if kind == "die":
                log(
                    f"[{i + 1}/{len(futures)}] scale {_label(rec['scale'])} die {rec['die']}: "
                    f"uncal {rec['uncalibrated']:.3f} A {rec['baseline_a']:.3f} B {rec['baseline_b']:.3f} "
                    f"cimcal {rec['cimcal']:.3f} fast {rec['cimcal_fast']:.3f}"
                    + (f" oracle {rec['oracle']:.3f}" if "oracle" in rec else "")
                    + (f" finetune {rec['finetune']:.3f}" if "finetune" in rec else "")
                )
            else:
                log(
                    f"[{i + 1}/{len(futures)}] budget {rec['budget']} die {rec['die']}: {rec['accuracy']:.3f}"
                )
    if command is None:
        command = f"python -m bench.quality --dies {dies} --json {json_path}" + (
            f" --scales {' '.join(_label(s) for s in row_scales)}"
            if drv_spec.has_scales and row_scales != DEFAULT_SCALES
            else ""
        )
    result: dict[str, Any] = {
        "config": {
            "command": command,
            "model": data.model_name,
            "software_accuracy": data.software_accuracy,
            "ideal_accuracy": ideal,
            "scales": list(row_scales),
            "dies": dies,
            "test_clips": int(data.test_y.size),
            "calib_clips": data.calib_clips,
            "tune_clips": int(data.tune_y.size),
            "data_note": data.data_note,
            "comparison_note": spec.comparison_note,
            "sample_word": spec.sample_word,
            "figure": spec.figure
            if drv_spec.name == SIMULATED
            else spec.figure.replace(".png", f"-{drv_spec.name}.png"),
            "finetune_dies": min(finetune_dies, dies),
            "finetune_evals": finetune_evals,
            "budget": DEFAULT_BUDGET,
            "budgets": list(budgets),
            "budget_dies": budget_dies,
            "budget_scale": budget_scale,
            "workers": workers,
            "n_macros": g.n_macros,
            "driver": drv_spec.describe(),
            "fleet_seed": FLEET_SEED,
            "seed": seed,
        },
        "summary": summarize(records, ideal),
        "budget_curve": _budget_curve(sweep, budgets),
        "dies": records,
        "budget_runs": sweep,
        "elapsed_s": time.perf_counter() - t_start,
    }
    write_outputs(result, json_path, md_path, png_path)
    log("\n".join(render_section(result)))
    log(f"done in {result['elapsed_s'] / 60:.1f} min")
    return result


def _label(scale: float | None) -> str:
    return "-" if scale is None else f"{scale:g}"


def write_outputs(
    result: dict[str, Any],
    json_path: str | Path | None,
    md_path: str | Path | None,
    png_path: str | Path | None = None,
) -> None:
    """The result JSON, the model's section of the markdown, and its figure (``png_path``, or
    docs/<the figure the result names> when a markdown is written)."""
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1, default=_json_default))
    if md_path:
        write_markdown(result, Path(md_path))
        png_path = png_path or ROOT / "docs" / result["config"].get("figure", "quality.png")
    if png_path:
        write_figure(result, Path(png_path))


def _json_default(v: object) -> object:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    raise TypeError(f"not JSON serializable: {type(v)}")


def main(argv: Sequence[str] | None = None) -> None:
    assert __doc__ is not None
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default=DEFAULT_MODEL, help="model and its data")
    p.add_argument("--model-file", type=Path, default=None, help="another file for that model's data")
    p.add_argument("--dies", type=int, default=20, help="dies per variation scale")
    p.add_argument("--json", type=Path, default=None, help="write the full result (every die) here")
    p.add_argument("--scales", type=float, nargs="+", default=None)
    p.add_argument("--driver", default=SIMULATED, help="registered driver the dies are measured on")
    p.add_argument(
        "--driver-options", default="{}", metavar="JSON", help="its options (validated by its Options model)"
    )
    p.add_argument(
        "--scale-option",
        default=None,
        metavar="NAME",
        help="the driver option --scales sets (default: variation_scale on the simulated driver, none elsewhere)",
    )
    p.add_argument("--test-clips", type=int, default=None, help="test subset size (default: the model's)")
    p.add_argument("--finetune-dies", type=int, default=4)
    p.add_argument("--finetune-evals", type=int, default=40)
    p.add_argument("--budget-dies", type=int, default=6)
    p.add_argument("--budgets", type=int, nargs="*", default=list(DEFAULT_BUDGETS))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the data subsets and activation statistics")
    p.add_argument("--no-docs", action="store_true", help="do not write docs/quality.md and the figure")
    p.add_argument(
        "--render", action="store_true", help="only re-render docs/quality.md and the figure from --json"
    )
    p.add_argument(
        "--ablation", action="store_true", help="compare compensation variants instead (prints a table)"
    )
    p.add_argument("--timing", action="store_true", help="time each step in this process instead")
    a = p.parse_args(argv)
    try:
        options = json.loads(a.driver_options)
        if not isinstance(options, dict):
            raise ValueError("a JSON object of driver options is needed")
        spec = DriverSpec(
            a.driver,
            options,
            a.scale_option or ("variation_scale" if a.driver == SIMULATED else None),
        )
        if a.scales and not spec.has_scales:
            raise ValueError(f"driver {a.driver!r}: --scales needs --scale-option (the option they set)")
    except (ValueError, LookupError) as e:
        p.error(f"--driver {a.driver} --driver-options: {e}")
    if a.timing:
        run_timing(a.model_file, model=a.model, driver=spec)
        return
    if a.ablation:
        out = run_ablation(
            a.dies,
            a.scales,
            test_clips=a.test_clips,
            workers=a.workers,
            model_path=a.model_file,
            model=a.model,
            seed=a.seed,
            driver=spec,
        )
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1, default=_json_default))
        return
    if a.render:
        if a.json is None:
            p.error("--render needs --json")
        write_outputs(json.loads(Path(a.json).read_text()), None, ROOT / "docs" / "quality.md")
        return
    run_quality_bench(
        a.dies,
        a.json,
        a.scales,
        model=a.model,
        test_clips=a.test_clips,
        finetune_dies=a.finetune_dies,
        finetune_evals=a.finetune_evals,
        budgets=a.budgets,
        budget_dies=a.budget_dies,
        workers=a.workers,
        model_path=a.model_file,
        seed=a.seed,
        md_path=None if a.no_docs else ROOT / "docs" / "quality.md",
        command="python -m bench.quality " + shlex.join(sys.argv[1:] if argv is None else list(argv)),
        driver=spec,
    )


if __name__ == "__main__":
    main()

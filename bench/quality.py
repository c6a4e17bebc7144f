"""Quality benchmark: accuracy of dies before and after calibration, against fair baselines.

For every row (a named process corner of the simulated fleet by default; ``--scales`` for bare
variation multipliers; any registered driver with ``--driver NAME --driver-options JSON`` and
``--scale-option``), ``dies`` dies are each measured with, all with the same copies of the model's
row tiles on idle macros (cimcal's) and, except uncalibrated, the same signature:

* ideal chip      : the program on a variation-free chip (same for every die);
* uncalibrated    : the ideal image, copies included, no trim;
* baseline A      : offset-only threshold trim (from the signature);
* baseline B      : the two-point trim, gain and offset per column (from the signature);
* fine-tuning     : per-chip threshold fine-tuning, gradient-based through a surrogate of the die
                    fitted from its reads of a calibration set disjoint from the test clips, with the
                    die in the loop, given ``--finetune-budget-ratio`` (10) x cimcal's tester seconds
                    (:mod:`app.calibration.finetune`, :mod:`bench.finetune`);
* cimcal          : characterization (default budget) + compensation (production setting);
* ORACLE          : cimcal's compensation fed the simulator's hidden truth (upper bound; only on a
                    driver that offers an oracle, see :func:`bench.oracle.oracle_for`).

Each method's tester and host seconds per die are recorded, and per row cimcal's margin over the
best of the others (the ORACLE excepted). ``--model`` picks the model and its data
(:mod:`bench.quality_data`): ``kws-bnn@1`` (default) or ``digits-bnn@1``. A budget sweep (accuracy
vs read vectors per die) runs at one row. The dies run in ``workers`` processes with single-threaded
BLAS (:mod:`bench.quality_dies`); the report is :mod:`bench.quality_report`.

Run: ``python -m bench.quality --dies 20`` writes docs/quality-kws-bnn.json (committed), the
model's section of docs/quality.md and its figure; ``--render`` re-renders them from that JSON. On a
vendor's driver: ``cimcal bench quality --driver acme --driver-options '{"resource":
"TCPIP0::10.0.0.5::INSTR"}' --model digits-bnn@1 --dies 4``.
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
from hardware.registry import driver_class

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


Setting = float | str | None
"""One row of the benchmark: a value of the driver option the rows vary (a corner name, a variation
scale), or None where the driver runs once with its options as given."""


def _row_scales(
    spec: DriverSpec, scales: Sequence[float | str] | None, default: Sequence[float | str]
) -> tuple[Setting, ...]:
    """The rows' settings: the given ones (or ``default``) where the spec varies an option, else one row."""
    if not spec.has_scales:
        if scales:
            raise ValueError(f"driver {spec.name!r}: --scales needs --scale-option (the option they set)")
        return (None,)
    return tuple(v if isinstance(v, str) else float(v) for v in (scales or default))


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
        for name, cfg in (("full", CompensationConfig()), ("one copy", FAST)):
            out[f"compensate_{budget}_{name}_s"] = min(
                compensate(ctx, res[0].signature, addr.ecid, config=cfg).compute_s for _ in range(5)
            )
    for k, v in out.items():
        log(f"{k}: {1e3 * v:.0f} ms")
    return out


def run_ablation(
    dies: int = 4,
    scales: Sequence[float | str] | None = None,
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
    scales: Sequence[float | str] | None = None,
    *,
    model: str = DEFAULT_MODEL,
    test_clips: int | None = None,
    calib_clips: int | None = None,
    tune_clips: int | None = None,
    finetune_dies: int | None = None,
    finetune_budget_ratio: float = 10.0,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    budget_dies: int = 6,
    budget_scale: Setting = None,
    workers: int = 2,
    md_path: str | Path | None = ROOT / "docs" / "quality.md",
    png_path: str | Path | None = None,
    model_path: str | Path | None = None,
    seed: int = 0,
    command: str | None = None,
    driver: DriverSpec | None = None,
    records_from: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the benchmark for ``model`` on ``driver`` (default: the simulated fleet); returns the
    result dict (also written to ``json_path``, the run's section of ``md_path`` and its figure,
    ``png_path`` or docs/<the model's figure>, when those paths are not None). Subset sizes left None
    are the model's defaults (:data:`bench.quality_data.MODELS`); ``finetune_dies`` None: every die.
    ``records_from``: no die runs; the result is made of the dies a run cut short kept in its
    ``.partial.jsonl`` (marked partial, with how many dies of each row finished)."""
    t_start = time.perf_counter()
    spec = MODELS[model]
    drv_spec = driver or DriverSpec()
    row_scales = _row_scales(drv_spec, scales, default_settings(drv_spec))
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
    n_ft = dies if finetune_dies is None else min(finetune_dies, dies)
    tasks: list[tuple[str, tuple[Any, ...]]] = []
    for d in range(dies):  # die by die across the rows: a run cut short still covers every row
        for si, scale in enumerate(row_scales):
            tasks.append(("die", (si, scale, d, d < n_ft, finetune_budget_ratio)))
    si_budget = row_scales.index(budget_scale) if budget_scale in row_scales else len(row_scales)
    for b in budgets:
        for d in range(budget_dies):
            tasks.append(("budget", (si_budget, budget_scale, d, int(b))))
    records: list[dict[str, Any]] = []
    sweep: list[dict[str, Any]] = []
    # Every finished die as one JSON line next to the result, so a run cut short keeps what it measured.
    partial = Path(f"{json_path}.partial.jsonl") if json_path and records_from is None else None
    if partial is not None:
        partial.write_text("")
    if records_from is not None:
        kept = [json.loads(line) for line in records_from.read_text().splitlines() if line.strip()]
        records = [{k: v for k, v in r.items() if k != "kind"} for r in kept if r["kind"] == "die"]
        tasks = []
    with worker_pool(data, workers, drv_spec) as pool:
        futures = [
            (kind, pool.submit(die_task if kind == "die" else budget_task, *args)) for kind, args in tasks
        ]
        for i, (kind, fut) in enumerate(futures):
            rec = fut.result()
            (records if kind == "die" else sweep).append(rec)
            if partial is not None:
                with partial.open("a") as f:
                    f.write(json.dumps({"kind": kind, **rec}, default=_json_default) + "\n")
            if kind == "die":
                log(
                    f"[{i + 1}/{len(futures)}] {_label(rec['scale'])} die {rec['die']}: "
                    + " ".join(f"{m} {rec[m]:.3f}" for m in METHODS if m in rec)
                )
            else:
                log(
                    f"[{i + 1}/{len(futures)}] budget {rec['budget']} die {rec['die']}: {rec['accuracy']:.3f}"
                )
    if command is None:
        command = f"python -m bench.quality --dies {dies}" + (f" --json {json_path}" if json_path else "")
    replicas = sorted({int(r["replicas"]) for r in records})
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
            "replicas": replicas[0] if len(replicas) == 1 else replicas,
            "finetune_dies": n_ft,
            "finetune_budget_ratio": finetune_budget_ratio,
            "budget": DEFAULT_BUDGET,
            "budgets": list(budgets),
            "budget_dies": budget_dies,
            "budget_scale": budget_scale,
            "workers": workers,
            "n_macros": g.n_macros,
            "driver": drv_spec.describe(),
            "fleet_seed": FLEET_SEED,
            "seed": seed,
            **(
                {"partial": {_label(sc): sum(r["scale"] == sc for r in records) for sc in row_scales}}
                if records_from is not None
                else {}
            ),
        },
        "summary": summarize(records, ideal),
        "budget_curve": _budget_curve(sweep, budgets),
        "dies": [{k: v for k, v in r.items() if k in DIE_KEYS} for r in records],
        "elapsed_s": None if records_from is not None else time.perf_counter() - t_start,
    }
    write_outputs(result, json_path, md_path, png_path)
    if partial is not None:
        partial.unlink(missing_ok=True)
    log("\n".join(render_section(result)))
    log(f"done in {(time.perf_counter() - t_start) / 60:.1f} min")
    return result


DIE_KEYS = ("scale", "die", "ecid", *METHODS, "finetune_tester_s", "cimcal_tester_s", "finetune_passes")
"""What the result keeps of every die (the JSON is committed next to the docs: keep it small)."""


def default_settings(spec: DriverSpec) -> tuple[float | str, ...]:
    """The rows when none are given: every named corner where the option is ``corner``, else the
    default variation scales."""
    if spec.scale_option == "corner":
        from hardware.sim.corners import CORNERS

        return tuple(CORNERS)
    return DEFAULT_SCALES


def default_json_path(model: str) -> Path:
    """Where a model's result is written by default: docs/quality-<model name>.json (committed)."""
    return ROOT / "docs" / f"quality-{model.split('@')[0]}.json"


def _label(scale: Setting) -> str:
    return "-" if scale is None else scale if isinstance(scale, str) else f"{scale:g}"


def write_outputs(
    result: dict[str, Any],
    json_path: str | Path | None,
    md_path: str | Path | None,
    png_path: str | Path | None = None,
) -> None:
    """The result JSON, the model's section of the markdown, and its figure (``png_path``, or
    docs/<the figure the result names> when a markdown is written)."""
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
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


def _simulated_option(scales: Sequence[float] | None) -> str:
    """The simulated fleet's default row option: ``corner`` where the driver has named corners and no
    ``--scales`` were given, else ``variation_scale``."""
    fields = driver_class(SIMULATED).Options.model_fields
    return "corner" if "corner" in fields and not scales else "variation_scale"


def main(argv: Sequence[str] | None = None) -> None:
    assert __doc__ is not None
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default=DEFAULT_MODEL, help="model and its data")
    p.add_argument("--model-file", type=Path, default=None, help="another file for that model's data")
    p.add_argument("--dies", type=int, default=20, help="dies per row (corner or scale)")
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write the result here (default with the docs: docs/quality-<model name>.json)",
    )
    rows = p.add_mutually_exclusive_group()
    rows.add_argument("--corners", nargs="+", default=None, metavar="NAME", help="rows: these corners")
    rows.add_argument("--scales", type=float, nargs="+", default=None, help="rows: these option values")
    p.add_argument("--driver", default=SIMULATED, help="registered driver the dies are measured on")
    p.add_argument(
        "--driver-options", default="{}", metavar="JSON", help="its options (validated by its Options model)"
    )
    p.add_argument(
        "--scale-option",
        default=None,
        metavar="NAME",
        help="the driver option the rows set (default on the simulated driver: corner, or variation_scale "
        "with --scales; none elsewhere)",
    )
    p.add_argument("--test-clips", type=int, default=None, help="test subset size (default: the model's)")
    p.add_argument("--tune-clips", type=int, default=None, help="fine-tuning set size (default: the model's)")
    p.add_argument(
        "--finetune-dies", type=int, default=None, help="fine-tune the first N dies of a row (default: all)"
    )
    p.add_argument(
        "--finetune-budget-ratio",
        type=float,
        default=10.0,
        help="fine-tuning's tester budget, in multiples of cimcal's characterization tester seconds",
    )
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
    p.add_argument(
        "--from-partial",
        action="store_true",
        help="run no die: write the result, docs and figure from the dies the same command, cut short, "
        "kept in <json>.partial.jsonl",
    )
    a = p.parse_args(argv)
    settings: list[float | str] | None = a.corners or a.scales
    try:
        options = json.loads(a.driver_options)
        if not isinstance(options, dict):
            raise ValueError("a JSON object of driver options is needed")
        option = a.scale_option or ("corner" if a.corners else None)
        if option is None and a.driver == SIMULATED:
            option = _simulated_option(a.scales)
        spec = DriverSpec(a.driver, options, option)
        if settings and not spec.has_scales:
            raise ValueError(
                f"driver {a.driver!r}: --scales/--corners need --scale-option (the option they set)"
            )
    except (ValueError, LookupError) as e:
        p.error(f"--driver {a.driver} --driver-options: {e}")
    if a.timing:
        run_timing(a.model_file, model=a.model, driver=spec)
        return
    if a.ablation:
        out = run_ablation(
            a.dies,
            settings,
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
        write_outputs(
            json.loads(Path(a.json or default_json_path(a.model)).read_text()),
            None,
            ROOT / "docs" / "quality.md",
        )
        return
    json_path = a.json if (a.json or a.no_docs) else default_json_path(a.model)
    args = [v for v in (sys.argv[1:] if argv is None else argv) if v != "--from-partial"]
    records_from = Path(f"{json_path}.partial.jsonl") if a.from_partial else None
    run_quality_bench(
        a.dies,
        json_path,
        settings,
        model=a.model,
        test_clips=a.test_clips,
        tune_clips=a.tune_clips,
        finetune_dies=a.finetune_dies,
        finetune_budget_ratio=a.finetune_budget_ratio,
        budgets=a.budgets,
        budget_dies=a.budget_dies,
        workers=a.workers,
        model_path=a.model_file,
        seed=a.seed,
        md_path=None if a.no_docs else ROOT / "docs" / "quality.md",
        command="python -m bench.quality " + shlex.join(args),
        driver=spec,
        records_from=records_from,
    )


if __name__ == "__main__":
    main()

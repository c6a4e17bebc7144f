"""Every figure of issue 12 in one run: ``cimcal bench`` (or ``python -m bench.all``).

    cimcal bench [--dies 8] [--lot-dies 256] [--device cpu|cuda] [--workers N]
                 [--wafers 2] [--dies-per-wafer 12] [--celery 1,2]
                 [--clients 64] [--api-seconds 10] [--api-rounds 2]
                 [--skip api,celery,...] [--seed 0] [--json PATH]

Prints host ms per die (estimate / compensate / bookkeeping), tester s per die (characterization,
functional test), dies/s end to end (characterize + compensate + functional test through the job
system: the local runner and 1 and 2 Celery workers at ``CIMCAL_BROKER_URL``), lot re-compensation
dies/s (synthetic stored signatures, extrapolated to 12,500 dies unless ``--lot-dies 12500``), and
the cached image GET against ``/healthz``: throughput and p99 ratios.

Each part calls the benchmark that owns it (``bench.characterize.measure`` for estimation,
``bench.api.measure`` for serving, ``bench.throughput`` end to end, ``bench.compensate`` for the lot).
Defaults keep the run to a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PARTS = ("estimate", "compensate", "lot", "local", "celery", "api")


def estimate_part(seed: int) -> dict[str, Any]:
    from bench.characterize import measure

    result: dict[str, Any] = measure(seed=seed)
    return result


def throughput_part(args: argparse.Namespace, celery: str) -> list[dict[str, Any]]:
    from bench import throughput

    out = Path(tempfile.mkdtemp(prefix="cimcal-bench-all-")) / "throughput.json"
    argv = [
        "--wafers", str(args.wafers),
        "--dies-per-wafer", str(args.dies_per_wafer),
        "--steps", "characterize,compensate,functional-test",
        "--celery", celery,
        "--json", str(out),
    ]  # fmt: skip
    throughput.main(argv)
    rows: list[dict[str, Any]] = json.loads(out.read_text())
    return rows


def api_part(clients: int, seconds: float, rounds: int) -> dict[str, Any]:
    """Cached image GET against ``/healthz``, side by side on one server with locust (bench.api)."""
    from bench.api import measure

    result: dict[str, Any] = measure(clients=clients, seconds=seconds, rounds=rounds)
    return result


def _row(label: str, value: float | None, unit: str, target: str = "", note: str = "") -> str:
    shown = "-" if value is None else f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{label:<46} {shown:>10} {unit:<10} {target:<12} {note}"


def report(r: dict[str, Any]) -> list[str]:
    lines = [f"{'figure':<46} {'value':>10} {'unit':<10} {'target':<12} how"]
    comp = r.get("compensate")
    est = r.get("estimate")
    if est is not None:
        lines.append(
            _row(
                "host: estimate (median per die)",
                est.get("estimate_ms_median"),
                "ms",
                "",
                "bench.characterize",
            )
        )
    elif comp is not None:
        lines.append(
            _row(
                "host: characterize (simulator + estimation)",
                comp["characterize_host_ms_median (simulator + estimation)"],
                "ms CPU",
                "",
                "estimate part skipped: estimation not split from the simulator",
            )
        )
    if comp is not None:
        pd = comp["per_die"]
        lines += [
            _row(
                "host: compensate (median per die, one core)",
                pd["compensate_ms_median"],
                "ms CPU",
                "< 25 with bk",
            ),
            _row("host: bookkeeping (decode, store, DB row)", pd["bookkeeping_ms_median"], "ms CPU"),
            _row(
                "host: compensate + bookkeeping",
                pd["compensate_plus_bookkeeping_ms_median"],
                "ms CPU",
                "< 25",
            ),
            _row("host: signature record (characterize's DB)", pd["signature_record_ms_median"], "ms CPU"),
            _row(
                "tester: characterization per die",
                (est or {}).get("tester_s_per_die", comp["tester_s_per_die_characterize"]),
                "s",
                "<= 0.1",
            ),
            _row("tester: functional test per die", pd["tester_s_per_die_functional_test"], "s"),
        ]
    lot = r.get("lot")
    if lot is not None:
        lines.append(
            _row(
                f"re-compensation ({lot['dies']} synthetic dies, {lot['device']})",
                lot["dies_per_s"],
                "dies/s",
                "",
                f"{lot['workers']} worker(s), batches of {lot['batch_dies']}",
            )
        )
        lines.append(
            _row("  12,500-die lot (extrapolated, wall)", lot["lot_12500_s_extrapolated"], "s", "< 120")
        )
        lines.append(
            _row(
                "  12,500-die lot (from CPU s, all cores ours)",
                lot.get("lot_12500_s_if_every_core_were_ours"),
                "s",
                "< 120",
                "what an unshared machine would take",
            )
        )
    runs = r.get("throughput") or []
    by_mode = {t["mode"]: t for t in runs}
    for t in runs:
        lines.append(_row(f"end to end: {t['mode']} ({t['dies']} dies)", t["dies_per_s"], "dies/s", ">= 10"))
    if "celery-1" in by_mode and "celery-2" in by_mode:
        ratio = by_mode["celery-2"]["dies_per_s"] / by_mode["celery-1"]["dies_per_s"]
        lines.append(_row("  celery 2 workers / 1 worker", ratio, "x", ">= 1.8", f"{os.cpu_count()} cores"))
    api = r.get("api")
    if api is not None:
        lines.append(
            _row("image GET / healthz throughput", api["rps_ratio"], "x", ">= 0.9")
        )
        lines.append(_row("image GET / healthz p99", api["p99_ratio"], "x", "<= 2"))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dies", type=int, default=8, help="per-die host cost: simulated dies")
    ap.add_argument(
        "--lot-dies", type=int, default=256, help="re-compensation: synthetic dies (12500: a lot)"
    )
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--workers", type=int, default=None, help="re-compensation processes (default: cores)")
    ap.add_argument("--wafers", type=int, default=2)
    ap.add_argument("--dies-per-wafer", type=int, default=12)
    ap.add_argument("--celery", default="1,2")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--api-seconds", type=float, default=10.0, help="locust seconds per route and round")
    ap.add_argument("--api-rounds", type=int, default=2, help="rounds of the two routes, order alternated")
    ap.add_argument("--skip", default="", help=f"parts to leave out, of {','.join(PARTS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    skip = {p for p in a.skip.split(",") if p}
    if skip - set(PARTS):
        ap.error(f"unknown parts {sorted(skip - set(PARTS))}")
    t0 = time.perf_counter()
    r: dict[str, Any] = {"seed": a.seed, "cores": os.cpu_count()}
    if "estimate" not in skip:
        r["estimate"] = estimate_part(a.seed)
    if "compensate" not in skip or "lot" not in skip:
        from bench import compensate

        part = compensate.measure(
            a.dies, 0 if "lot" in skip else a.lot_dies, a.batch, a.device, a.seed, a.workers
        )
        r["lot"] = part.pop("lot", None)
        r["compensate"] = part
    if "local" not in skip or "celery" not in skip:
        r["throughput"] = throughput_part(a, "" if "celery" in skip else a.celery)
    if "api" not in skip:
        r["api"] = api_part(a.clients, a.api_seconds, a.api_rounds)
    r["wall_s"] = time.perf_counter() - t0
    print()
    print("\n".join(report(r)))
    print(f"\n(cimcal bench, seed {a.seed}, {os.cpu_count()} cores, {r['wall_s']:.0f} s)")
    if a.json:
        a.json.write_text(json.dumps(r, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

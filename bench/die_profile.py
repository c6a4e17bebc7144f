"""CPU per die of the calibration loop, part by part, on one thread (no job system):

    python -m bench.die_profile [--dies 4] [--budget 16384] [--stats 0]

Registers the reference model and a one-wafer lot in a temporary SQLite database, runs one warm-up
die, then characterize + compensate + functional test on ``--dies`` more through
:mod:`app.services.calibration` on the station's driver (the simulated fleet by default: fleet seed
``CIMCAL_DRIVER_OPTIONS`` or 2022), under cProfile with a CPU clock, and prints the CPU per die of
each part (the simulator's die truth and reads, the rest of characterization (estimation), compensation,
the network the functional test runs). ``--stats N`` also prints the N functions with the most own time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch
from sqlalchemy import select
from threadpoolctl import threadpool_limits

PARTS = {
    "characterize_die (all)": ("app/services/calibration.py", "characterize_die"),
    "  simulator: die truth": ("hardware/sim/variation.py", "die_variation"),
    "  simulator: characterization reads": ("hardware/sim/driver.py", "_read_macro"),
    "compensate_die (all)": ("app/services/calibration.py", "compensate_die"),
    "functional_test_die (all)": ("app/services/calibration.py", "functional_test_die"),
    "  simulator: network": ("hardware/sim/driver.py", "_run_network"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dies", type=int, default=4)
    ap.add_argument("--budget", type=int, default=None, help="characterization read vectors per die")
    ap.add_argument("--stats", type=int, default=0)
    args = ap.parse_args(argv)

    # One die per process thread, as the job processes run (JobContext.pin_numerics).
    torch.set_num_threads(1)
    threadpool_limits(limits=1, user_api="blas")
    from app.config import get_settings
    from app.db import migrate
    from app.db.session import make_engine, make_session_factory, session_scope
    from app.db.tables import Die
    from app.demo import wafer_sites
    from app.services import calibration, lots
    from app.services.hardware import DriverPool
    from app.services.images import ImageStore
    from app.services.lots import WaferSpec
    from app.services.runtime import ModelRuntimes
    from bench.throughput import ensure_model

    tmp = Path(tempfile.mkdtemp(prefix="cimcal-die-profile-"))
    settings = get_settings().model_copy(
        update={"database_url": f"sqlite:///{tmp / 'bench.db'}", "image_store_dir": tmp / "images"}
    )
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)
    factory = make_session_factory(engine)
    ref = ensure_model(factory, settings)
    with session_scope(factory) as s:
        sites, _ = wafer_sites(args.dies + 1)
        lots.register_lot(s, lot_id="PROFILE", product="BENCH", wafers=[WaferSpec(1, sites)], actor="bench")
    with session_scope(factory) as s:
        ecids = [d.ecid for d in s.scalars(select(Die)).all()][: args.dies + 1]
    pool = DriverPool.from_settings(settings)
    runtimes = ModelRuntimes(settings)
    store = ImageStore(settings.image_store_dir)

    def one(ecid: str) -> float | None:
        calibration.characterize_die(factory, pool, ecid, budget=args.budget)
        calibration.compensate_die(factory, runtimes, store, ecid, ref)
        out = calibration.functional_test_die(factory, pool, runtimes, store, settings, ecid, ref)
        return out.accuracy

    one(ecids[0])  # warm-up: imports, the model's runtime, the test clips
    prof = cProfile.Profile(time.process_time)
    c0 = time.process_time()
    for ecid in ecids[1:]:
        prof.enable()
        acc = one(ecid)
        prof.disable()
        print(f"{ecid}: functional-test accuracy {acc}", file=sys.stderr)
    n = len(ecids) - 1
    total = time.process_time() - c0
    stats = pstats.Stats(prof)
    cum: dict[str, float] = {}
    for (path, _line, fn), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        for label, (suffix, name) in PARTS.items():
            if fn == name and suffix in path:
                cum[label] = cum.get(label, 0.0) + ct
    print(f"{n} dies, budget {args.budget or 'default'}, CPU per die (profiled: about +10 %):")
    sim_char = cum.get("  simulator: die truth", 0.0) + cum.get("  simulator: characterization reads", 0.0)
    cum["  the rest: estimation, pattern writes, DB"] = cum.get("characterize_die (all)", 0.0) - sim_char
    order = list(PARTS)
    order.insert(3, "  the rest: estimation, pattern writes, DB")
    for label in order:
        print(f"  {label:44s} {1e3 * cum.get(label, 0.0) / n:8.1f} ms")
    print(f"  {'all, with the profiler':44s} {1e3 * total / n:8.1f} ms")
    if args.stats:
        stats.sort_stats("tottime").print_stats(args.stats)
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())

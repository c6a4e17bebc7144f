"""Host cost of compensation per die, and lot-scale re-compensation from stored signatures.

    python -m bench.compensate [--dies 8] [--lot-dies 256] [--batch 64] [--device cpu|cuda]
                               [--workers N] [--seed 0] [--json PATH]

Per die (host CPU time on one core: torch limited to one thread), on the station's reference KWS model (its
activation statistics as the station computes them) and ``--dies`` dies of the simulated fleet
characterized at the default budget:

* ``compensate``: :func:`app.calibration.pipeline.compensate` (the image, encoded and hashed);
* ``bookkeeping``: decoding the stored signature, writing the image to the content-addressed store
  and its row + audit row to a SQLite database, as :func:`app.services.calibration.compensate_die`
  does; plus, separately, recording the signature (what characterization's bookkeeping costs).

Lot: ``--lot-dies`` dies registered in a temporary SQLite database with **synthetic** signatures
(labelled ``synthetic`` in their meta; for this benchmark only): the characterized dies'
signatures replicated and perturbed with a seeded generator (gain x N(1, 1 %), offset + N(0, 0.2)
MAC, per-cell errors of another macro of the same die). Then :func:`recompensate_lot` computes every
image (store + database included); its fixed cost (workers starting, the model's tables built) is
measured apart on a lot of one die per worker, and the 12,500-die lot is projected from the wall
clock, and from the CPU seconds (fixed + per die x 12,500, this process and its workers) as if
every core were the run's own (``--lot-dies 12500`` runs the whole lot: about 3.5 GB of signatures
and 1 GB of images on disk).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

LOT_OF_25_WAFERS = 12_500
DIES_PER_WAFER = 500


@dataclass
class Station:
    """A temporary station: SQLite database, image store, settings and the reference model's runtime."""

    tmp: Path
    settings: Any
    factory: Any
    runtimes: Any
    store: Any
    model_id: int
    model_ref: str
    runtime: Any


def station(tmp: Path | None = None) -> Station:
    from app.config import get_settings
    from app.db import migrate
    from app.db.session import make_engine, make_session_factory, session_scope
    from app.db.tables import Model
    from app.nn.model import load_model_bytes
    from app.services.images import ImageStore
    from app.services.runtime import ModelRuntimes, runtime_for
    from bench.throughput import model_bytes

    tmp = tmp or Path(tempfile.mkdtemp(prefix="cimcal-bench-comp-"))
    settings = get_settings().model_copy(
        update={"database_url": f"sqlite:///{tmp / 'bench.db'}", "image_store_dir": tmp / "images"}
    )
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)
    factory = make_session_factory(engine)
    data, origin = model_bytes()
    net = load_model_bytes(data)
    print(f"model {net.name}@{net.version}: {origin}", file=sys.stderr)
    runtimes = ModelRuntimes(settings)
    with session_scope(factory) as s:
        # Stored without datasets: the station's generated KWS sets (see app.services.runtime).
        row = Model(
            name=net.name,
            version=net.version,
            blob=data,
            sha256=hashlib.sha256(data).hexdigest(),
            size_bytes=len(data),
            class_names=list(net.class_names),
            software_accuracy=None,
        )
        s.add(row)
        s.flush()
        model_id = row.id
        runtime = runtime_for(s, runtimes, row)
    store = ImageStore(settings.image_store_dir)
    return Station(tmp, settings, factory, runtimes, store, model_id, f"{net.name}@{net.version}", runtime)


def characterized(n: int, seed: int) -> list[tuple[str, Any, float, float, Any]]:
    """(ecid, signature, host CPU seconds, tester seconds, driver) of ``n`` simulated dies at the
    default budget."""
    from app.calibration.pipeline import characterize
    from app.config import get_settings
    from hardware.driver import DieAddress
    from hardware.sim.driver import FleetConfig, SimulatedDriver, SimulatedFleet

    fleet = SimulatedFleet(FleetConfig(seed=get_settings().fleet_seed))
    out = []
    for i in range(n):
        address = DieAddress("BCOMP", 1 + i // 16, i % 16 - 8, seed % 7 - 3)
        drv = SimulatedDriver(fleet=fleet, noise_seed=seed + i).connect()
        drv.probe(address)
        t0 = time.process_time()
        res = characterize(drv, rng=seed + i)
        out.append((address.ecid, res.signature, time.process_time() - t0, res.tester_s, drv))
    return out


def synthetic_signature(base: Any, rng: np.random.Generator) -> Any:
    """A SYNTHETIC signature for the lot benchmark: ``base`` perturbed (see the module docstring)."""
    gain = base.gain * (1.0 + 0.01 * rng.standard_normal(base.gain.shape))
    offset = base.offset_mac + 0.2 * rng.standard_normal(base.offset_mac.shape)
    cells = None if base.cell_error is None else np.roll(base.cell_error, int(rng.integers(1, 32)), axis=0)
    meta = {**base.meta, "synthetic": "bench.compensate: perturbed copy of a characterized die"}
    return replace(
        base, gain=gain.astype(np.float32), offset_mac=offset.astype(np.float32), cell_error=cells, meta=meta
    )


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def measure_per_die(st: Station, dies: list[tuple[str, Any, float, float, Any]]) -> dict[str, Any]:
    """Host CPU ms per die (median, ``time.process_time``: on a shared machine wall time measures the
    neighbours) of compensation and its bookkeeping, on one core."""
    import torch

    from app.calibration.pipeline import ModelContext, Signature, compensate, functional_test
    from app.db.repositories import audit, images
    from app.db.repositories import dies as die_repo
    from app.db.session import session_scope
    from app.db.tables import Image
    from app.services.lots import WaferSpec, register_lot
    from app.services.signatures import record_signature
    from hardware.driver import DieAddress

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ctx = ModelContext(st.runtime.program, st.runtime.stats)
    addresses = [DieAddress.from_ecid(d[0]) for d in dies]
    with session_scope(st.factory) as s:
        register_lot(
            s,
            lot_id=addresses[0].lot_id,
            product="BENCH",
            wafers=[
                WaferSpec(w, [(a.x, a.y) for a in addresses if a.wafer == w])
                for w in sorted({a.wafer for a in addresses})
            ],
            actor="bench",
        )
    compensate(ctx, dies[0][1], dies[0][0])  # warm: the per-model tables are built once per process
    comp, decode, store_s, db_s, sig_db = [], [], [], [], []
    functional_s, functional_host, accuracy = [], [], []
    for ecid, sig, _, tester_s, drv in dies:
        blob = sig.to_bytes()
        t0 = time.process_time()
        with session_scope(st.factory) as s:
            die = die_repo.get_by_ecid(s, ecid)
            assert die is not None
            die_id = die.id
            row = record_signature(
                s,
                die_id=die_id,
                blob=blob,
                reads=0,
                tester_s=tester_s,
                n_dead_cols=sig.n_dead_cols,
                n_stuck_cells=sig.n_stuck_cells,
                offset_spread_mac=0.0,
                actor="bench",
            )
            sig_id, sig_sha = row.id, row.sha256
        sig_db.append(time.process_time() - t0)
        t0 = time.process_time()
        decoded = Signature.from_bytes(blob)
        decode.append(time.process_time() - t0)
        t0 = time.process_time()
        out = compensate(ctx, decoded, ecid, sig_sha)
        comp.append(time.process_time() - t0)
        t0 = time.process_time()
        content = st.store.put(out.image_bytes)
        store_s.append(time.process_time() - t0)
        t0 = time.process_time()
        with session_scope(st.factory) as s, s.begin_nested():
            images.add(
                s,
                Image(
                    die_id=die_id,
                    model_id=st.model_id,
                    signature_id=sig_id,
                    ecid=ecid,
                    signature_sha256=sig_sha,
                    content_sha256=content,
                    size_bytes=len(out.image_bytes),
                    algorithm_version=out.algorithm_version,
                    predicted_agreement=out.predicted_agreement,
                    compute_s=out.compute_s,
                    calibratable=out.calibratable,
                ),
            )
            audit.add(s, actor="bench", action="image.compute", target=ecid, details={"sha256": content})
        db_s.append(time.process_time() - t0)
        t0 = time.process_time()
        func = functional_test(drv, out.image_bytes, st.runtime.test_features, st.runtime.test_labels)
        functional_host.append(time.process_time() - t0)
        functional_s.append(func.tester_s)
        accuracy.append(func.accuracy)
    torch.set_num_threads(threads)
    book = [a + b + c for a, b, c in zip(decode, store_s, db_s, strict=True)]
    return {
        "dies": len(dies),
        "compensate_ms_median": _median_ms(comp),
        "compensate_ms_max": max(comp) * 1e3,
        "bookkeeping_ms_median": _median_ms(book),
        "signature_decode_ms_median": _median_ms(decode),
        "image_store_put_ms_median": _median_ms(store_s),
        "image_db_write_ms_median": _median_ms(db_s),
        "signature_record_ms_median": _median_ms(sig_db),
        "compensate_plus_bookkeeping_ms_median": _median_ms([a + b for a, b in zip(comp, book, strict=True)]),
        "tester_s_per_die_functional_test": statistics.median(functional_s),
        "functional_test_host_ms_median (simulator)": _median_ms(functional_host),
        "functional_test_accuracy": accuracy,
    }


def synthetic_lot(st: Station, base: list[Any], n_dies: int, rng: np.random.Generator) -> str:
    """A lot of ``n_dies`` dies registered with SYNTHETIC current signatures; its id."""
    from sqlalchemy import select

    from app.db.session import session_scope
    from app.db.tables import Die, Signature, Wafer
    from app.services.lots import WaferSpec, rectangular_sites, register_lot

    lot = "BLOT" + hashlib.sha256(f"{time.time()}".encode()).hexdigest()[:6].upper()
    wafers = [
        WaferSpec(w + 1, rectangular_sites(25, 20)[: min(DIES_PER_WAFER, n_dies - w * DIES_PER_WAFER)])
        for w in range(-(-n_dies // DIES_PER_WAFER))
    ]
    with session_scope(st.factory) as s:
        register_lot(s, lot_id=lot, product="BENCH", wafers=wafers, actor="bench")
    with session_scope(st.factory) as s:
        die_ids = s.scalars(
            select(Die.id).join(Wafer, Die.wafer_id == Wafer.id).where(Wafer.lot_id == lot).order_by(Die.id)
        ).all()
    done = 0
    while done < len(die_ids):
        chunk = die_ids[done : done + 256]
        rows = []
        for die_id in chunk:
            blob = synthetic_signature(base[int(rng.integers(len(base)))], rng).to_bytes()
            rows.append(
                Signature(
                    die_id=die_id,
                    version=1,
                    is_current=True,
                    blob=blob,
                    sha256=hashlib.sha256(blob).hexdigest(),
                    reads=0,
                    tester_s=0.0,
                    n_dead_cols=0,
                    n_stuck_cells=0,
                    offset_spread_mac=0.0,
                )
            )
        with session_scope(st.factory) as s:
            s.add_all(rows)
        done += len(chunk)
    return lot


def _run_lot(st: Station, lot: str, batch: int, device: str | None, workers: int) -> tuple[Any, float]:
    """Re-compensate ``lot``: the service's result and the CPU seconds of this process and its workers."""
    from app.services.recompensate import recompensate_lot

    cpu0 = time.process_time()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = recompensate_lot(
        st.factory, st.runtimes, st.store, lot, st.model_ref, batch_dies=batch, device=device, workers=workers
    )
    cpu_s = time.process_time() - cpu0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the worker processes, ended by now
    cpu_s += (children.ru_utime - children0.ru_utime) + (children.ru_stime - children0.ru_stime)
    return out, cpu_s


def measure_lot(
    st: Station, base: list[Any], n_dies: int, seed: int, batch: int, device: str | None, workers: int
) -> dict[str, Any]:
    """Re-compensate a lot of ``n_dies`` dies with SYNTHETIC stored signatures: dies per second of wall
    time and per CPU second (every thread of this process and its workers; the store's fsyncs are
    wall, not CPU).

    The run's fixed cost (worker processes starting: torch imported, the model's tables built) is
    measured apart, on a lot of one die per worker (one-die batches), so the per-die CPU cost is the
    difference over the dies in between, and the 12,500-die projection is fixed + per die x 12,500
    over the cores."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    small = synthetic_lot(st, base, workers, rng)
    lot = synthetic_lot(st, base, n_dies, rng)
    setup_s = time.perf_counter() - t0
    print(f"lot {lot}: {n_dies} dies with synthetic signatures stored in {setup_s:.0f} s", file=sys.stderr)
    fixed, fixed_cpu = _run_lot(st, small, 1, device, workers)
    out, cpu_s = _run_lot(st, lot, batch, device, workers)
    cores = os.cpu_count() or 1
    per_die_cpu = (
        (cpu_s - fixed_cpu) / (out.computed - fixed.computed) if out.computed > fixed.computed else None
    )
    return {
        "dies": out.computed,
        "device": out.device,
        "batch_dies": batch,
        "workers": workers if out.device == "cpu" else 1,
        "wall_s": out.wall_s,
        "numerics_wall_s": out.compute_s,
        "cpu_s": cpu_s,
        "dies_per_cpu_s": out.computed / cpu_s if cpu_s > 0 else None,
        "fixed_cpu_s (lot of one die per worker)": fixed_cpu,
        "fixed_wall_s (lot of one die per worker)": fixed.wall_s,
        "per_die_cpu_ms (beyond the fixed cost)": None if per_die_cpu is None else per_die_cpu * 1e3,
        "lot_12500_s_if_every_core_were_ours": None
        if per_die_cpu is None
        else (fixed_cpu + per_die_cpu * LOT_OF_25_WAFERS) / min(cores, max(1, workers)),
        "dies_per_s": out.dies_per_s,
        "lot_12500_s_extrapolated": LOT_OF_25_WAFERS / out.dies_per_s if out.dies_per_s else None,
        "signatures": "synthetic (perturbed copies of characterized dies)",
    }


def measure(
    dies: int = 8,
    lot_dies: int = 256,
    batch: int = 64,
    device: str | None = None,
    seed: int = 0,
    workers: int | None = None,
) -> dict[str, Any]:
    """Per-die host cost, characterization host/tester cost of the same dies, and the lot rate."""
    st = station()
    chars = characterized(dies, seed)
    result: dict[str, Any] = {
        "seed": seed,
        "characterize_host_ms_median (simulator + estimation)": _median_ms([c[2] for c in chars]),
        "tester_s_per_die_characterize": statistics.median(c[3] for c in chars),
        "per_die": measure_per_die(st, chars),
    }
    if lot_dies:
        n = workers or os.cpu_count() or 1
        result["lot"] = measure_lot(st, [c[1] for c in chars], lot_dies, seed, batch, device, n)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dies", type=int, default=8)
    ap.add_argument("--lot-dies", type=int, default=256, help="0: skip the lot")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--workers", type=int, default=None, help="lot: processes (default: the cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    r = measure(a.dies, a.lot_dies, a.batch, a.device, a.seed, a.workers)
    print(json.dumps(r, indent=2))
    if a.json:
        a.json.write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of a simulated lot through the job system: the local runner, then 1 and 2 Celery
worker processes, in one run, reported in dies per second (per step) and as ratios to local.

    python -m bench.throughput [--dies-per-wafer 12] [--wafers 2] [--steps characterize,compensate]
                               [--functional-test-sample 0.1] [--sites 2] [--celery 1,2]
                               [--driver NAME] [--driver-options JSON]
                               [--light] [--db URL] [--json PATH]

Each mode calibrates its own lot of the same size (a fresh lot: every die costs tester time) after
a one-die warm-up job, so one-off costs (imports, the model's activation statistics, the KWS
evaluation clips) are not counted. Celery modes start ``cimcal worker`` processes (concurrency 1,
solo pool: one process per core) against Redis at ``CIMCAL_BROKER_URL`` with a private queue and
key prefix. The database defaults to a temporary SQLite file shared by every process.

The dies are measured on the station's driver (``CIMCAL_DRIVER`` / ``CIMCAL_DRIVER_OPTIONS``, the
simulated fleet by default); ``--driver`` / ``--driver-options`` override both, for this process and
its Celery workers. ``--light`` swaps the calibration use cases for the light test steps (``tests.jobs.fake_steps``):
what the job machinery itself costs per die. The last line extrapolates the measured rate to a
25-wafer lot of 12,500 dies.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings, get_settings
from app.db import migrate
from app.db.session import make_engine, make_session_factory, session_scope
from app.demo import wafer_sites
from app.errors import NotFoundError
from app.jobs.celery_app import CeleryRunner, make_celery
from app.jobs.runner import JobRunner, LocalRunner
from app.jobs.steps import calibration_steps
from app.services import jobs, lots, models
from app.services.jobs import ExecutionContext, StepFunctions
from app.services.lots import WaferSpec

ROOT = Path(__file__).resolve().parents[1]
LOT_OF_25_WAFERS = 12_500
LIGHT_STEPS = "tests.jobs.fake_steps:build"


@dataclass
class ModeResult:
    mode: str
    dies: int
    wall_s: float
    dies_per_s: float
    step_dies_per_s: dict[str, float | None]
    failed_items: int
    cpu_s_per_die: float | None = None  # CPU of the processes that ran the dies (bench process or workers)


CpuProbe = Callable[[], float]


def proc_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of processes ``pids`` so far (Linux ``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / tick


def model_bytes() -> tuple[bytes, str]:
    """The committed reference model, or (timing only) an untrained network of the same shape."""
    from app.nn.model import model_bytes as encode
    from app.nn.model import reference_model_path

    path = reference_model_path()
    if path.exists():
        return path.read_bytes(), "reference"
    import torch

    from app.nn.kws_data import CLASS_NAMES
    from app.nn.train import ArchConfig, KwsBnn, export_network

    torch.manual_seed(0)
    net = export_network(KwsBnn(ArchConfig(), len(CLASS_NAMES)).eval(), CLASS_NAMES, version="untrained")
    return encode(net), "untrained (timing only: no reference model committed)"


def ensure_model(factory: sessionmaker[Session], settings: Settings) -> str:
    """The KWS model registered with its datasets, as the station does at start-up."""
    from app.nn.model import load_model_bytes
    from app.services import datasets

    data, origin = model_bytes()
    net = load_model_bytes(data)
    ref = f"{net.name}@{net.version}"
    with session_scope(factory) as s:
        datasets.ensure_builtin_datasets(s, settings, actor="bench")
        try:
            models.get_model(s, net.name, net.version)
        except NotFoundError:
            models.upload_model(
                s,
                name=net.name,
                version=net.version,
                data=data,
                software_accuracy=None,
                max_bytes=settings.max_model_bytes,
                settings=settings,
                actor="bench",
            )
    print(f"model {ref}: {origin}", file=sys.stderr)
    return ref


def new_job(
    factory: sessionmaker[Session], lot_id: str, wafers: int, dies_per_wafer: int, args: argparse.Namespace
) -> int:
    with session_scope(factory) as s:
        sites, _ = wafer_sites(dies_per_wafer)
        lots.register_lot(
            s,
            lot_id=lot_id,
            product="BENCH",
            wafers=[WaferSpec(n, sites) for n in range(1, wafers + 1)],
            actor="bench",
        )
        return jobs.create_calibration_job(
            s,
            lot_id=lot_id,
            steps=args.steps,
            model=args.model_ref,
            functional_test_sample=args.functional_test_sample,
            actor="bench",
        ).id


def wait_done(factory: sessionmaker[Session], job_id: int, timeout_s: float) -> jobs.JobProgress:
    deadline = time.monotonic() + timeout_s
    while True:
        with session_scope(factory) as s:
            p = jobs.job_progress(s, job_id)
        if p.job.state not in ("queued", "running"):
            return p
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {p.job.state} after {timeout_s} s")
        time.sleep(0.25)


def measure(
    mode: str,
    runner: JobRunner,
    factory: sessionmaker[Session],
    args: argparse.Namespace,
    tag: str,
    cpu: CpuProbe = time.process_time,
) -> ModeResult:
    warm = new_job(factory, f"BW{tag}{mode.upper().replace('-', '')}"[:32], 1, 1, args)
    runner.submit(warm)
    wait_done(factory, warm, args.timeout)
    job_id = new_job(
        factory, f"B{tag}{mode.upper().replace('-', '')}"[:32], args.wafers, args.dies_per_wafer, args
    )
    t0, c0 = time.perf_counter(), cpu()
    runner.submit(job_id)
    p = wait_done(factory, job_id, args.timeout)
    wall = time.perf_counter() - t0
    cpu_s = cpu() - c0
    result = ModeResult(
        mode=mode,
        dies=p.total_dies,
        wall_s=wall,
        dies_per_s=p.total_dies / wall,
        step_dies_per_s={s.step: s.dies_per_s for s in p.steps},
        failed_items=sum(s.failed for s in p.steps),
        cpu_s_per_die=cpu_s / p.total_dies if p.total_dies else None,
    )
    print(
        f"{mode:>9}: {result.dies} dies in {wall:.1f} s = {result.dies_per_s:.2f} dies/s, "
        f"{result.cpu_s_per_die or 0:.3f} CPU s per die",
        file=sys.stderr,
    )
    return result


@contextmanager
def celery_workers(
    n: int, database_url: str, queue: str, prefix: str, light: bool, log_dir: Path, settings: Settings
) -> Iterator[CpuProbe]:
    # The workers see the same plugins (PYTHONPATH kept) and measure on the same driver.
    env = {
        **os.environ,
        "CIMCAL_DATABASE_URL": database_url,
        "CIMCAL_AUTO_MIGRATE": "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "CIMCAL_TEST_STEP_DELAY_S": "0",
        "CIMCAL_DRIVER": settings.driver,
        "CIMCAL_DRIVER_OPTIONS": json.dumps(settings.driver_options),
    }
    procs = []
    for i in range(n):
        cmd = [sys.executable, "-m", "app.cli", "worker", "--queue", queue, "--key-prefix", prefix]
        cmd += ["--concurrency", "1", "--pool", "solo", "--log-level", "warning"]
        if light:
            cmd += ["--steps", LIGHT_STEPS]
        log = (log_dir / f"worker-{n}-{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
    try:
        yield lambda: proc_cpu_s([p.pid for p in procs])
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def light_steps(factory: sessionmaker[Session], settings: Settings) -> StepFunctions:
    sys.path.insert(0, str(ROOT))
    from tests.jobs.fake_steps import build

    built: StepFunctions = build(factory, settings)
    return built


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wafers", type=int, default=2)
    ap.add_argument("--dies-per-wafer", type=int, default=12)
    ap.add_argument("--steps", default="characterize,compensate", type=lambda s: s.split(","))
    ap.add_argument("--functional-test-sample", type=float, default=1.0)
    ap.add_argument(
        "--sites", type=int, default=None, help="local runner threads (default CIMCAL_TEST_SITES)"
    )
    ap.add_argument("--celery", default="1,2", help="worker counts to measure ('' for none)")
    ap.add_argument("--driver", default=None, help="registered driver (default CIMCAL_DRIVER)")
    ap.add_argument(
        "--driver-options", default=None, metavar="JSON", help="its options (default CIMCAL_DRIVER_OPTIONS)"
    )
    ap.add_argument("--light", action="store_true", help="light test steps: the machinery's own cost")
    ap.add_argument("--db", default=None, help="database URL (default: a temporary SQLite file)")
    ap.add_argument("--chunk-dies", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="cimcal-bench-"))
    base = get_settings()
    database_url = args.db or f"sqlite:///{tmp / 'bench.db'}"
    update: dict[str, object] = {"database_url": database_url, "image_store_dir": tmp / "images"}
    if args.driver is not None:
        update["driver"] = args.driver
        update["driver_options"] = {}  # the configured options belong to the configured driver
    if args.driver_options is not None:
        options = json.loads(args.driver_options)
        if not isinstance(options, dict):
            ap.error("--driver-options must be a JSON object")
        update["driver_options"] = options
    settings = base.model_copy(update=update)
    print(f"driver {settings.driver} {json.dumps(settings.driver_options)}", file=sys.stderr)
    os.environ["CIMCAL_IMAGE_STORE_DIR"] = str(settings.image_store_dir)
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    factory = make_session_factory(engine)
    tag = secrets.token_hex(2).upper()
    args.model_ref = "bench@light" if args.light else ensure_model(factory, settings)
    if args.light:
        sys.path.insert(0, str(ROOT))
        from tests.jobs.conftest import add_models

        add_models(factory, ("bench@light",))

    results: list[ModeResult] = []
    sites = args.sites or settings.test_sites
    make_steps: Callable[[sessionmaker[Session], Settings], StepFunctions] = (
        light_steps if args.light else calibration_steps
    )
    local = LocalRunner(
        ExecutionContext(factory, make_steps(factory, settings)),
        workers=sites,
        chunk_dies=args.chunk_dies,
        resume_on_start=False,
    )
    local.start()
    try:
        results.append(measure(f"local-{sites}", local, factory, args, tag))
    finally:
        local.stop()

    counts = [int(c) for c in args.celery.split(",") if c.strip()]
    if counts:
        queue, prefix = f"cimcal.bench.{tag}", f"cimcal-bench-{tag}:"
        app = make_celery(base.broker_url, queue=queue, key_prefix=prefix)
        runner = CeleryRunner(app, factory, chunk_dies=args.chunk_dies)
        for n in counts:
            with celery_workers(n, database_url, queue, prefix, args.light, tmp, settings) as cpu:
                results.append(measure(f"celery-{n}", runner, factory, args, tag, cpu))

    local_rate = results[0].dies_per_s
    print()
    print(
        f"{'mode':>9} {'dies':>6} {'wall s':>8} {'dies/s':>8} {'x local':>8} {'CPU s/die':>9}  per step dies/s"
    )
    for r in results:
        steps = ", ".join(f"{k} {v:.2f}" if v else f"{k} -" for k, v in r.step_dies_per_s.items())
        print(
            f"{r.mode:>9} {r.dies:>6} {r.wall_s:>8.1f} {r.dies_per_s:>8.2f} {r.dies_per_s / local_rate:>8.2f}"
            f" {r.cpu_s_per_die or 0:>9.3f}  {steps}"
        )
    best = max(results, key=lambda r: r.dies_per_s)
    minutes = LOT_OF_25_WAFERS / best.dies_per_s / 60
    print(
        f"\nExtrapolated from {best.dies} dies ({best.mode}): a lot of {LOT_OF_25_WAFERS} dies "
        f"({'+'.join(args.steps)}) takes {minutes:.1f} min at {best.dies_per_s:.2f} dies/s"
    )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())

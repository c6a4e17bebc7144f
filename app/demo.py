"""``cimcal demo``: register a simulated lot, calibrate it through the job system, print the summary.

Everything goes through the same paths as production: the lot is registered by the lots service,
the reference KWS model is uploaded by the models service, and one calibration job (characterize ->
compensate -> functional test) runs on the in-process runner with one thread per test site
(``CIMCAL_TEST_SITES``) on the simulated fleet, at the process corner ``--corner`` (default:
``CIMCAL_CORNER`` when set, else :data:`DEMO_CORNER`, a corner where calibration matters; see
docs/corners.md). The summary reads the lot report the dashboard shows.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from app.config import Settings, get_settings
from app.db import migrate
from app.db.session import make_engine, make_session_factory, session_scope
from app.errors import NotFoundError
from app.jobs.runner import LocalRunner
from app.jobs.steps import calibration_steps
from app.services import datasets, jobs, lots, models
from app.services.hardware import station_sites
from app.services.jobs import STEP_ORDER, ExecutionContext, JobProgress, StepFunctions
from app.services.lots import Site, WaferSpec, circular_sites
from app.services.reporting.lots import LotReport, lot_report
from app.services.reporting.rows import die_rows
from app.services.reporting.scope import find_model

DEMO_PRODUCT = "KWS-BCIM-1"
DEMO_CORNER = "slow"
"""The demo's default process corner: uncalibrated dies lose accuracy there (docs/corners.md)."""


@dataclass(frozen=True)
class DemoOptions:
    """``lot_id`` None: ``DEMO<timestamp>``; ``model`` None: the reference model's own name@version;
    ``database_url`` None: ``CIMCAL_DATABASE_URL``; ``workers`` None: ``CIMCAL_TEST_SITES``; ``corner``
    None: ``CIMCAL_CORNER`` when set, else :data:`DEMO_CORNER`."""

    lot_id: str | None = None
    wafers: int = 3
    dies_per_wafer: int = 16
    model: str | None = None
    database_url: str | None = None
    functional_test_sample: float = 1.0
    workers: int | None = None
    corner: str | None = None
    progress: bool = True
    out: TextIO = field(default=sys.stdout, compare=False)


@dataclass(frozen=True)
class DemoResult:
    lot_id: str
    job_id: int
    model: str
    database_url: str
    corner: str
    wall_s: float
    job_s: float
    report: LotReport
    progress: JobProgress
    tester_s_per_die: float | None
    test_s_per_die: float | None


def wafer_sites(n_dies: int) -> tuple[list[Site], int]:
    """``n_dies`` sites of a round wafer and its diameter (die pitches): the smallest circular map
    holding them, keeping the sites nearest the centre so the map stays round."""
    if n_dies < 1:
        raise ValueError("a wafer needs at least one die")
    diameter = next(d for d in range(1, 400) if len(circular_sites(d)) >= n_dies)
    sites = sorted(circular_sites(diameter), key=lambda s: (math.hypot(*s), s[1], s[0]))[:n_dies]
    return sorted(sites, key=lambda s: (s[1], s[0])), diameter


def _demo_model(factory: sessionmaker[Session], ref: str | None, settings: Settings) -> str:
    """``ref`` (default: the KWS reference model) once it is stored: the station's datasets and
    reference models (``kws-bnn@1``, ``digits-bnn@1``) are registered on first use."""
    with session_scope(factory) as s:
        datasets.ensure_builtin_datasets(s, settings)
        stored = models.ensure_reference_models(s, settings, actor="demo")
    if ref is None:
        if not stored:
            raise NotFoundError("the reference models are missing; upload a model and pass --model")
        return f"{stored[0].name}@{stored[0].version}"
    name, version = jobs.parse_model_ref(ref)
    with session_scope(factory) as s:
        models.get_model(s, name, version)
    return ref


def _bars(progress: JobProgress, enabled: bool) -> dict[str, tqdm]:
    return {
        s.step: tqdm(
            total=s.total,
            desc=f"{s.step:>15}",
            unit="die",
            position=i,
            leave=True,
            disable=not enabled,
            dynamic_ncols=True,
        )
        for i, s in enumerate(progress.steps)
    }


StepsFactory = Callable[[sessionmaker[Session], Settings], StepFunctions]


def run(options: DemoOptions, steps: StepsFactory = calibration_steps) -> DemoResult:
    """Run the demo and return its figures (``run_demo`` prints them). ``steps`` builds the step
    functions (tests pass light ones)."""
    t_start = time.perf_counter()
    base = get_settings()
    corner = options.corner or (base.corner if "corner" in base.model_fields_set else DEMO_CORNER)
    settings = base.model_copy(
        update={"database_url": options.database_url or base.database_url, "corner": corner}
    )
    station_sites(settings)  # refuses an unknown corner (or other bad option) before anything is written
    lot_id = options.lot_id or f"DEMO{datetime.now(UTC):%y%m%d%H%M%S}"
    engine = make_engine(settings.database_url)
    try:
        migrate.upgrade(engine)
        factory = make_session_factory(engine)
        model = _demo_model(factory, options.model, settings)
        with session_scope(factory) as s:
            sites, diameter = wafer_sites(options.dies_per_wafer)
            shape = {"kind": "circular", "diameter": diameter}  # the dashboard draws the outline
            lots.register_lot(
                s,
                lot_id=lot_id,
                product=DEMO_PRODUCT,
                wafers=[WaferSpec(n, sites, shape) for n in range(1, options.wafers + 1)],
                actor="demo",
            )
            job_id = jobs.create_calibration_job(
                s,
                lot_id=lot_id,
                steps=STEP_ORDER,
                model=model,
                functional_test_sample=options.functional_test_sample,
                actor="demo",
            ).id

        workers = options.workers or settings.test_sites
        runner = LocalRunner(
            ExecutionContext(factory, steps(factory, settings)),
            workers=workers,
            resume_on_start=False,
        )
        t_job = time.perf_counter()
        runner.start()
        runner.submit(job_id)
        with session_scope(factory) as s:
            progress = jobs.job_progress(s, job_id)
        bars = _bars(progress, options.progress)
        try:
            while not runner.wait_idle(timeout_s=0.5):
                with session_scope(factory) as s:
                    progress = jobs.job_progress(s, job_id)
                for st in progress.steps:
                    bars[st.step].update(st.done - bars[st.step].n)
        finally:
            runner.stop()
            with session_scope(factory) as s:
                progress = jobs.job_progress(s, job_id)
            for st in progress.steps:
                bars[st.step].update(st.done - bars[st.step].n)
                bars[st.step].close()
        job_s = time.perf_counter() - t_job

        with session_scope(factory) as s:
            report = lot_report(s, lot_id, model=model)
            rows = die_rows(s, lot_id, find_model(s, model))
        char_s = [r.tester_s for r in rows if r.tester_s is not None]
        test_s = [r.test_time_s for r in rows if r.test_time_s is not None]
        return DemoResult(
            lot_id=lot_id,
            job_id=job_id,
            model=model,
            database_url=settings.database_url,
            corner=corner,
            wall_s=time.perf_counter() - t_start,
            job_s=job_s,
            report=report,
            progress=progress,
            tester_s_per_die=sum(char_s) / len(char_s) if char_s else None,
            test_s_per_die=sum(test_s) / len(test_s) if test_s else None,
        )
    finally:
        engine.dispose()


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:5.1f} %"


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f} s"


def summary(r: DemoResult) -> str:
    rep, p = r.report, r.progress
    lines = [
        "",
        f"Lot {r.lot_id}: {rep.n_dies} dies on {len(rep.wafers)} wafers, model {r.model}, job {r.job_id} "
        f"{p.job.state}",
        f"  simulated fleet at process corner {r.corner!r} (docs/corners.md)",
        f"  characterized {rep.n_characterized}, functionally tested {rep.n_tested}, passed {rep.n_passed}"
        f"  -> yield {_pct(rep.yield_pct)}",
        "",
        "Yield by soft bin:",
    ]
    for b in rep.pareto:
        share = 100.0 * b.count / rep.n_tested if rep.n_tested else 0.0
        lines.append(f"  bin {b.soft_bin:>3}  {b.name:<24} {b.count:>6}  {share:5.1f} %")
    before, after = rep.accuracy_before_stats, rep.accuracy_after_stats
    lines += [
        "",
        "Accuracy            mean      worst",
        f"  before calibration {_pct(before.mean)}  {_pct(before.min)}",
        f"  after calibration  {_pct(after.mean)}  {_pct(after.min)}",
        "",
        f"Tester time per die: characterization {_s(r.tester_s_per_die)}, functional test {_s(r.test_s_per_die)}",
        f"Wall time: {r.wall_s:.1f} s ({r.job_s:.1f} s in the job: {(p.dies_per_s or 0.0):.2f} dies/s)",
    ]
    if p.errors:
        lines += ["", f"Failed items ({sum(s.failed for s in p.steps)}), most recent:"]
        lines += [f"  {e} {step}: {err}" for e, step, _, err in p.errors[:5]]
    lines += ["", "Where to look next:"]
    if make_url(r.database_url) != make_url(get_settings().database_url):
        lines.append(f"  export CIMCAL_DATABASE_URL={r.database_url}")
    base = "http://127.0.0.1:8000"
    lines += [
        "  cimcal serve                        # the service at " + base,
        "  cimcal keys create --role viewer    # a key for the dashboard and the API",
        f"  {base}/dashboard/lots/{r.lot_id}  (wafer maps, bin pareto, accuracy before/after)",
        f"  {base}/dashboard/jobs/{r.job_id}  (this job)",
        f"  {base}/docs  (the API: POST /v1/lots/{{lot}}/calibrate, GET /v1/jobs/{{id}})",
    ]
    return "\n".join(lines)


def run_demo(options: DemoOptions) -> int:
    result = run(options)
    print(summary(result), file=options.out)
    return 0 if result.progress.job.state == "succeeded" else 1

"""``cimcal worker``, ``cimcal jobs`` and ``cimcal demo``: batch jobs and the end-to-end demo."""

from __future__ import annotations

import argparse

from app.cli.base import Subcommands, subcommand
from app.config import get_settings
from app.db import migrate
from app.db.session import make_engine, make_session_factory


# ----------------------------------------------------------------------------------------------- worker
def _run_worker(args: argparse.Namespace) -> int:
    from app.jobs.celery_app import run_worker

    return run_worker(
        concurrency=args.concurrency or get_settings().test_sites,
        pool=args.pool,
        queue=args.queue,
        key_prefix=args.key_prefix,
        visibility_timeout_s=args.visibility_timeout,
        lease_s=args.lease_s if args.lease_s is not None else get_settings().job_lease_s,
        steps=args.steps,
        loglevel=args.log_level,
    )


@subcommand
def _worker(commands: Subcommands) -> None:
    from app.jobs.celery_app import DEFAULT_QUEUE

    p = commands.add_parser(
        "worker",
        help="run a Celery worker for batch jobs (CIMCAL_JOB_RUNNER=celery, broker CIMCAL_BROKER_URL)",
    )
    p.add_argument("--concurrency", type=int, default=None, help="dies at once (default: CIMCAL_TEST_SITES)")
    p.add_argument("--pool", default="threads", choices=["threads", "solo", "prefork"])
    p.add_argument("--queue", default=DEFAULT_QUEUE)
    p.add_argument("--key-prefix", default=None, help="prefix of every Redis key (isolates stations/tests)")
    p.add_argument(
        "--visibility-timeout",
        type=float,
        default=None,
        help="seconds before an unacknowledged chunk (of a dead worker) is delivered again (default: "
        "the lease + 8 dies x 30 s)",
    )
    p.add_argument(
        "--lease-s",
        type=float,
        default=None,
        help="seconds without a heartbeat before a die is reclaimed (default: CIMCAL_JOB_LEASE_S, 60)",
    )
    p.add_argument(
        "--steps", default=None, help=argparse.SUPPRESS
    )  # module:function, for tests and benchmarks
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(run=_run_worker)


# ------------------------------------------------------------------------------------------------- jobs
def _run_jobs_resume(args: argparse.Namespace) -> int:
    from app.jobs.build import build_runner
    from app.jobs.runner import LocalRunner

    settings = get_settings()
    engine = make_engine(settings.database_url)
    try:
        if settings.auto_migrate:
            migrate.upgrade(engine)
        runner = build_runner(settings, make_session_factory(engine), resume_on_start=False)
        runner.start()
        resumed = runner.resume([args.job] if args.job else None)
        if isinstance(runner, LocalRunner):
            runner.wait_idle()
        runner.stop()
    finally:
        engine.dispose()
    print(f"resumed {len(resumed)} job(s) on the {settings.job_runner} runner: {resumed}")
    return 0


@subcommand
def _jobs(commands: Subcommands) -> None:
    p = commands.add_parser("jobs", help="batch jobs")
    jobs = p.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    resume = jobs.add_parser(
        "resume",
        help="hand the open dies of unfinished jobs to the runner again (celery: re-send them, e.g. "
        "after the broker lost its queue; local: run them here until done)",
    )
    resume.add_argument("--job", type=int, default=None, help="only this job")
    resume.set_defaults(run=_run_jobs_resume)


# ------------------------------------------------------------------------------------------------- demo
def _run_demo(args: argparse.Namespace) -> int:
    from app.demo import DemoOptions, run_demo

    return run_demo(
        DemoOptions(
            lot_id=args.lot,
            wafers=args.wafers,
            dies_per_wafer=args.dies_per_wafer,
            model=args.model,
            database_url=args.db,
            functional_test_sample=args.functional_test_sample,
            workers=args.workers,
            corner=args.corner,
        )
    )


@subcommand
def _demo(commands: Subcommands) -> None:
    from app.demo import DemoOptions

    d = DemoOptions()
    p = commands.add_parser(
        "demo",
        help="register a simulated lot, calibrate it through the job system and print the summary",
    )
    p.add_argument("--lot", default=d.lot_id, help="lot ID (default: DEMO-<timestamp>)")
    p.add_argument("--wafers", type=int, default=d.wafers)
    p.add_argument("--dies-per-wafer", type=int, default=d.dies_per_wafer)
    p.add_argument("--model", default=d.model, help="name@version (uploaded from the reference model if new)")
    p.add_argument("--db", default=d.database_url, help="database URL (default: CIMCAL_DATABASE_URL)")
    p.add_argument("--functional-test-sample", type=float, default=d.functional_test_sample)
    p.add_argument("--workers", type=int, default=d.workers, help="dies at once (default: CIMCAL_TEST_SITES)")
    p.add_argument(
        "--corner",
        default=d.corner,
        help="process corner of the simulated fleet: typical, slow, skewed, aggressive (docs/corners.md; "
        "default: CIMCAL_CORNER when set, else the demo's corner where calibration matters)",
    )
    p.set_defaults(run=_run_demo)

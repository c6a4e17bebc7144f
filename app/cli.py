"""The ``cimcal`` command.

Adding a subcommand takes one function that declares its parser and sets ``run`` (the function that
does the work and returns the exit status), registered with ``@subcommand``::

    @subcommand
    def _export(commands: Subcommands) -> None:
        p = commands.add_parser("export", help="...")
        p.add_argument("--lot", required=True)
        p.set_defaults(run=lambda args: export_lot(args.lot))

Settings come from the environment (``CIMCAL_*``, see :mod:`app.config`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db import migrate
from app.db.session import make_engine, make_session_factory, session_scope
from app.db.tables import Role
from app.errors import AppError
from app.services import auth

if TYPE_CHECKING:
    Subcommands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subcommands = argparse._SubParsersAction

_REGISTRARS: list[Callable[[Subcommands], None]] = []


def subcommand(register: Callable[[Subcommands], None]) -> Callable[[Subcommands], None]:
    _REGISTRARS.append(register)
    return register


@contextmanager
def database_session(settings: Settings) -> Iterator[Session]:
    """A unit of work on the configured database (migrated first unless ``CIMCAL_AUTO_MIGRATE=0``)."""
    engine = make_engine(settings.database_url)
    try:
        if settings.auto_migrate:
            migrate.upgrade(engine)
        with session_scope(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------------------------ serve
def _run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port, log_level=args.log_level)
    return 0


@subcommand
def _serve(commands: Subcommands) -> None:
    p = commands.add_parser("serve", help="run the HTTP service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(run=_run_serve)


# --------------------------------------------------------------------------------------------------- db
def _run_db_upgrade(args: argparse.Namespace) -> int:
    engine = make_engine(get_settings().database_url)
    try:
        migrate.upgrade(engine, args.revision)
        with engine.connect() as conn:
            print(f"database at revision {migrate.current_revision(conn)}")
    finally:
        engine.dispose()
    return 0


@subcommand
def _db(commands: Subcommands) -> None:
    p = commands.add_parser("db", help="database schema")
    db = p.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    up = db.add_parser("upgrade", help="apply the Alembic migrations")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(run=_run_db_upgrade)


# ------------------------------------------------------------------------------------------------- keys
def _run_keys_create(args: argparse.Namespace) -> int:
    with database_session(get_settings()) as session:
        row, raw = auth.create_key(session, role=Role(args.role), name=args.name, actor="cli")
    print(f"created {row.role} key {row.prefix} ({row.name}); it is shown only now:", file=sys.stderr)
    print(raw)
    return 0


def _run_keys_list(args: argparse.Namespace) -> int:
    with database_session(get_settings()) as session:
        for k in auth.list_keys(session, include_revoked=args.all):
            revoked = f"  revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else ""
            print(f"{k.prefix}  {k.role:<8}  {k.created_at:%Y-%m-%d %H:%M}  {k.name}{revoked}")
    return 0


def _run_keys_revoke(args: argparse.Namespace) -> int:
    with database_session(get_settings()) as session:
        auth.revoke_key(session, prefix=args.prefix, actor="cli")
    print(f"revoked {args.prefix}")
    return 0


@subcommand
def _keys(commands: Subcommands) -> None:
    p = commands.add_parser("keys", help="API keys")
    keys = p.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    create = keys.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--name", default="cli")
    create.set_defaults(run=_run_keys_create)
    ls = keys.add_parser("list", help="list keys (prefix, role, created, name)")
    ls.add_argument("--all", action="store_true", help="include revoked keys")
    ls.set_defaults(run=_run_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key by its prefix")
    revoke.add_argument("prefix")
    revoke.set_defaults(run=_run_keys_revoke)


# ----------------------------------------------------------------------------------------------- worker
def _run_worker(args: argparse.Namespace) -> int:
    from app.jobs.celery_app import run_worker

    return run_worker(
        concurrency=args.concurrency or get_settings().test_sites,
        pool=args.pool,
        queue=args.queue,
        key_prefix=args.key_prefix,
        visibility_timeout_s=args.visibility_timeout,
        lease_s=args.lease_s,
        steps=args.steps,
        loglevel=args.log_level,
    )


@subcommand
def _worker(commands: Subcommands) -> None:
    from app.jobs.celery_app import DEFAULT_LEASE_S, DEFAULT_QUEUE, DEFAULT_VISIBILITY_TIMEOUT_S

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
        default=DEFAULT_VISIBILITY_TIMEOUT_S,
        help="seconds before an unacknowledged chunk (of a dead worker) is delivered again",
    )
    p.add_argument(
        "--lease-s",
        type=float,
        default=DEFAULT_LEASE_S,
        help="seconds without a heartbeat before a die is reclaimed",
    )
    p.add_argument(
        "--steps", default=None, help=argparse.SUPPRESS
    )  # module:function, for tests and benchmarks
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(run=_run_worker)


# ------------------------------------------------------------------------------------------------- jobs
def _run_jobs_resume(args: argparse.Namespace) -> int:
    from app.jobs.runner import LocalRunner, build_runner

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


# ----------------------------------------------------------------------------- data, model, benchmarks
def _run_data_kws(args: argparse.Namespace) -> int:
    from app.nn.kws_data import cli_data_kws

    settings = get_settings()
    print(
        cli_data_kws(
            args.cache_dir or settings.cache_dir / "kws",
            seed=args.seed,
            clips_per_class=args.clips_per_class,
            n_workers=args.workers,
            force=args.force,
        )
    )
    return 0


@subcommand
def _data(commands: Subcommands) -> None:
    p = commands.add_parser("data", help="datasets")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="DATASET")
    kws = sub.add_parser("kws", help="(re)generate the synthetic keyword-spotting dataset into the cache")
    kws.add_argument("--cache-dir", type=Path, default=None, help="default: CIMCAL_CACHE_DIR/kws")
    kws.add_argument("--seed", type=int, default=0)
    kws.add_argument(
        "--clips-per-class", type=int, default=None, help="every split (default: the reference sizes)"
    )
    kws.add_argument("--workers", type=int, default=2)
    kws.add_argument("--force", action="store_true", help="regenerate even when cached")
    kws.set_defaults(run=_run_data_kws)


def _run_train_reference(args: argparse.Namespace) -> int:
    from app.nn.model import reference_model_path

    out = args.out or reference_model_path().parent
    if args.model == "digits":
        from app.nn.train_digits import train_digits_reference

        result = train_digits_reference(out, seed=args.seed, version=args.version)
    else:
        from app.nn.train import train_reference

        result = train_reference(get_settings().cache_dir / "kws", out, seed=args.seed, version=args.version)
    print(f"software test accuracy {result.test_accuracy:.4f}; model at {result.path}")
    return 0


@subcommand
def _train_reference(commands: Subcommands) -> None:
    p = commands.add_parser(
        "train-reference",
        help="train a reference binary network: kws-bnn (CPU, < 30 min) or digits-bnn (CPU, minutes)",
    )
    p.add_argument("--model", choices=("kws", "digits"), default="kws", help="which reference (default: kws)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: app/nn/reference)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version", default="1")
    p.set_defaults(run=_run_train_reference)


BENCHMARKS = ("quality", "hal", "api", "throughput")


def _run_bench(args: argparse.Namespace) -> int:
    import importlib

    # Benchmarks live in the source tree (bench/), next to the packages, not in the installed wheel.
    root = Path(__file__).resolve().parents[1]
    if not (root / "bench" / f"{args.name}.py").exists():
        print(f"cimcal: bench/{args.name}.py not found: run from a source checkout", file=sys.stderr)
        return 2
    sys.path.insert(0, str(root))
    module = importlib.import_module(f"bench.{args.name}")
    module.main(args.args)
    return 0


@subcommand
def _bench(commands: Subcommands) -> None:
    p = commands.add_parser(
        "bench", help="benchmarks: quality, hal, api, throughput (options after the name; --help for each)"
    )
    p.add_argument("name", choices=BENCHMARKS)
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    p.set_defaults(run=_run_bench)


# ----------------------------------------------------------------------------------------------- models
def _ints_arg(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W or F (positive), got {text!r}")
    return shape


def _run_models_import(args: argparse.Namespace) -> int:
    import json

    from app.nn.model import model_bytes, parse_pass_limits
    from app.nn.network import DatasetRefs, ModelFormatError, Preprocessing, to_program
    from app.nn.onnx_import import network_from_onnx
    from hardware.chip import ChipError, ChipGeometry, map_network

    def fail(message: str) -> int:
        print(f"cimcal: {message}", file=sys.stderr)
        return 1

    try:
        names = (
            args.classes_file.read_text().splitlines() if args.classes_file else args.class_names.split(",")
        )
        data = args.file.read_bytes()
    except OSError as e:
        return fail(str(e))
    if (args.calibration_dataset is None) != (args.test_dataset is None):
        return fail("give both --calibration-dataset and --test-dataset, or neither")
    kind, _, threshold = args.preprocessing.partition(":")
    try:
        prep = (
            Preprocessing("binarize", threshold=float(threshold))
            if kind == "binarize"
            else Preprocessing(kind)
        )
        limits = (
            parse_pass_limits(json.loads(args.pass_limits), "--pass-limits") if args.pass_limits else None
        )
    except (ValueError, KeyError, TypeError) as e:
        return fail(f"bad --preprocessing or --pass-limits: {e!r}")
    datasets = DatasetRefs(args.calibration_dataset, args.test_dataset) if args.test_dataset else None
    try:
        net = network_from_onnx(
            data,
            name=args.name,
            version=args.version,
            class_names=[c.strip() for c in names if c.strip()],
            input_shape=args.input_shape,
            preprocessing=prep,
            datasets=datasets,
            pass_limits=limits,
        )
        map_network(to_program(net), ChipGeometry())  # what the upload checks: refuse a model that cannot run
        out = model_bytes(net)
    except (ModelFormatError, ChipError) as e:
        return fail(str(e))
    args.out.write_bytes(out)
    kinds = ", ".join(f"{layer.name} {layer.kind}" for layer in net.layers)
    n_binary = len(net.binary_layers())
    print(
        f"wrote {args.out}: {net.name}@{net.version}: {kinds}; {n_binary} binary, {net.macros_needed()} macro(s)"
    )
    if n_binary == 0:
        print(
            "cimcal: no binary layer: is the batch norm folded into the weights by the exporter?",
            file=sys.stderr,
        )
    return 0


@subcommand
def _models(commands: Subcommands) -> None:
    p = commands.add_parser("models", help="model files")
    sub = p.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    imp = sub.add_parser(
        "import",
        help="convert an ONNX file (torch.onnx.export of a supported network) into a model file",
        description="See docs/model.md, 'Bring your own PyTorch model'.",
    )
    imp.add_argument("file", type=Path, help="the .onnx file")
    imp.add_argument("--name", required=True)
    imp.add_argument("--version", required=True)
    classes = imp.add_mutually_exclusive_group(required=True)
    classes.add_argument("--class-names", help="comma-separated, in logit order")
    classes.add_argument("--classes-file", type=Path, help="one class name per line, in logit order")
    imp.add_argument(
        "--input-shape", type=_ints_arg, default=None, help="C,H,W or F (default: the ONNX input's)"
    )
    imp.add_argument("--preprocessing", default="none", help="none (default) or binarize:THRESHOLD")
    imp.add_argument("--calibration-dataset", default=None, metavar="NAME@VERSION")
    imp.add_argument("--test-dataset", default=None, metavar="NAME@VERSION")
    imp.add_argument(
        "--pass-limits", default=None, metavar="JSON", help='{"mode": "absolute", "grades": [...]}'
    )
    imp.add_argument("--out", type=Path, required=True, help="the model file to write (.npz)")
    imp.set_defaults(run=_run_models_import)


# ---------------------------------------------------------------------------------------------- drivers
def _schema_lines(schema: dict[str, Any]) -> list[str]:
    """One line per option: name, type, default, 'secret' for a SecretStr."""
    props = schema.get("properties") or {}
    if not props:
        return ["    (no options)"]
    required = set(schema.get("required") or [])
    lines = []
    for key, prop in props.items():
        kinds = [p.get("type", "?") for p in prop.get("anyOf", [prop])]
        secret = " secret" if prop.get("format") == "password" else ""
        default = " required" if key in required else f" = {prop.get('default')!r}"
        lines.append(f"    {key}: {' | '.join(map(str, kinds))}{secret}{default}")
    return lines


def _run_drivers_list(args: argparse.Namespace) -> int:
    import json

    from app.services.drivers import registered_drivers

    drivers, broken = registered_drivers()
    if args.json:
        out = {
            "drivers": [
                {"name": d.name, "version": d.version, "source": d.source, "options": d.options_schema}
                for d in drivers
            ],
            "broken": broken,
        }
        print(json.dumps(out, indent=2))
        return 0
    for d in drivers:
        print(f"{d.name} {d.version}  ({d.source})")
        print("\n".join(_schema_lines(d.options_schema)))
    for name, why in sorted(broken.items()):
        print(f"{name}  BROKEN: {why}")
    return 0


def _run_drivers_check(args: argparse.Namespace) -> int:
    import json

    from app.services.drivers import check_driver

    try:
        options = json.loads(args.options) if args.options else None
    except json.JSONDecodeError as e:
        print(f"cimcal: --options is not JSON: {e}", file=sys.stderr)
        return 2
    if options is not None and not isinstance(options, dict):
        print("cimcal: --options must be a JSON object", file=sys.stderr)
        return 2
    report = check_driver(
        get_settings(), args.name, options=options, site=args.site, resource=args.resource, die=args.die
    )
    print(f"driver {report.driver} {report.version}, site {report.site}, resource {report.resource or '-'}")
    print(f"options {json.dumps(report.options)}")
    for step in report.steps:
        mark = "ok  " if step.ok else "FAIL"
        print(f"  {mark} {step.name:<10} {1e3 * step.wall_s:9.1f} ms  {step.detail}")
    print(f"{'passed' if report.ok else 'FAILED'}; tester time charged {report.tester_s:.4f} s")
    return 0 if report.ok else 1


@subcommand
def _drivers(commands: Subcommands) -> None:
    from app.services.drivers import CHECK_DIE

    p = commands.add_parser("drivers", help="tester drivers: list them, check one against its tester")
    sub = p.add_subparsers(dest="drivers_command", required=True, metavar="COMMAND")
    ls = sub.add_parser("list", help="registered drivers with version and options; broken plugins with why")
    ls.add_argument("--json", action="store_true", help="print the full options JSON schemas")
    ls.set_defaults(run=_run_drivers_list)
    check = sub.add_parser(
        "check",
        help="connect, identify, geometry and one write/read round trip of a known pattern, with timings "
        "(exit status 0 when every step passed)",
    )
    check.add_argument("name", help="the driver's registered name")
    check.add_argument("--options", default=None, metavar="JSON", help="options over the configured ones")
    check.add_argument(
        "--site", type=int, default=0, help="test-site index (its configured resource/options)"
    )
    check.add_argument("--resource", default=None, help="the tester's address (default: the site's)")
    check.add_argument("--die", default=CHECK_DIE, metavar="ECID", help="where the prober steps")
    check.set_defaults(run=_run_drivers_check)


# ------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cimcal", description="Production-test station for CIM AI chips.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _REGISTRARS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except AppError as e:
        print(f"cimcal: {e.message}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())

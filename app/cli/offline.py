"""``cimcal data``, ``cimcal train-reference`` and ``cimcal bench``: datasets, reference models, benchmarks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.cli.base import Subcommands, subcommand
from app.config import get_settings


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


BENCHMARKS = ("all", "quality", "hal", "api", "throughput", "compensate", "priors", "exports")


def _run_bench(args: argparse.Namespace) -> int:
    import importlib

    # Benchmarks live in the source tree (bench/), next to the packages, not in the installed wheel.
    root = Path(__file__).resolve().parents[2]
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
        "bench",
        help="benchmarks: " + ", ".join(BENCHMARKS) + " (all, the default, runs every figure of issue 12;"
        " options after the name, e.g. cimcal bench all --dies 4; --help for each)",
    )
    p.add_argument("name", nargs="?", choices=BENCHMARKS, default="all", help="default: all (bench/all.py)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    p.set_defaults(run=_run_bench)

"""The ``cimcal`` command.

Adding a subcommand takes one function that declares its parser and sets ``run`` (the function that
does the work and returns the exit status), registered with ``@subcommand`` (:mod:`app.cli.base`) in the module of this package that holds its
concept (``server``, ``batch``, ``offline``, ``models``, ``drivers``; a new module goes into
``_MODULES`` below)::

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
from collections.abc import Sequence

from app.cli import batch, drivers, models, offline, server
from app.cli.base import _REGISTRARS, Subcommands, database_session, subcommand
from app.cli.offline import BENCHMARKS
from app.cli.server import WORKER_HEALTHCHECK_S
from app.errors import AppError

# Each module registers its subcommands when imported; ``cimcal --help`` lists them module by module
# in this order, and in the order they are written within a module.
_MODULES = (server, batch, offline, models, drivers)

__all__ = [
    "BENCHMARKS",
    "WORKER_HEALTHCHECK_S",
    "Subcommands",
    "build_parser",
    "database_session",
    "main",
    "subcommand",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cimcal", description="Production-test station for CIM AI chips.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    rank = {module.__name__: i for i, module in enumerate(_MODULES)}
    for register in sorted(_REGISTRARS, key=lambda r: rank.get(r.__module__, len(rank))):
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

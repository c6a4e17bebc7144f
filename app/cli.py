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
from typing import TYPE_CHECKING, TypeAlias

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

"""``cimcal serve``, ``cimcal db`` and ``cimcal keys``: the HTTP service, its schema and its API keys."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from app.cli.base import Subcommands, database_session, subcommand
from app.config import get_settings
from app.db import migrate
from app.db.session import make_engine
from app.db.tables import Role
from app.services import auth

# ------------------------------------------------------------------------------------------------ serve
WORKER_HEALTHCHECK_S = 60


def _run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if args.workers > 1:
        from app.main import prepare_database

        settings = get_settings()
        # Once, before the processes start: they would race to migrate and register the same rows.
        prepare_database(settings)
        if settings.runner_lock_file is None:
            # The workers read their settings from the environment: this names the lock they elect
            # their one job runner with (app/jobs/election.py).
            lock = Path(tempfile.mkdtemp(prefix="cimcal-serve-")) / "job-runner.lock"
            os.environ["CIMCAL_RUNNER_LOCK_FILE"] = str(lock)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        workers=args.workers if args.workers > 1 else None,
        # A worker answers the supervisor's pings from a thread; while it imports torch and loads the
        # models on a busy machine that can take longer than uvicorn's 5 s, and it would be killed
        # as hung and started again, over and over.
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
    )
    return 0


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


@subcommand
def _serve(commands: Subcommands) -> None:
    p = commands.add_parser("serve", help="run the HTTP service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="server processes (default 1); the job runner runs in one of them (docs/api-performance.md)",
    )
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
    from app.services.images import ImageStore

    settings = get_settings()
    # The store's change counter: servers sharing the store drop the key from their caches when the
    # revocation commits (app/services/changes.py).
    store = ImageStore(settings.image_store_dir)
    with database_session(settings) as session:
        auth.revoke_key(session, prefix=args.prefix, actor="cli")
    store.changes.close()
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

"""Engine and session factory; ``session_scope`` commits on success and rolls back on exception."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

# Session is re-exported so that app/api can name the type without importing SQLAlchemy.
__all__ = ["SQLITE_BUSY_TIMEOUT_MS", "Session", "make_engine", "make_session_factory", "session_scope"]

SQLITE_BUSY_TIMEOUT_MS = 30_000
READ_ONLY_OPTION = "cimcal_read_only"


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    """An engine for ``database_url``; SQLite gets WAL, foreign keys, a busy timeout and
    ``BEGIN IMMEDIATE`` transactions.

    SQLite allows one writer. A deferred transaction that reads first and writes later fails at once
    with "database is locked" when another writer committed in between (the busy timeout does not
    help there); taking the write lock at BEGIN makes concurrent requests queue instead.
    """
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **kwargs)

    # Connections are cheap; a pool smaller than the web server's thread pool makes requests queue.
    kwargs.setdefault("pool_size", 20)
    kwargs.setdefault("max_overflow", 40)
    engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        if url.database not in (None, "", ":memory:"):
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Read-only units of work (GET requests, lookups) begin deferred: WAL readers run in parallel.
        conn.exec_driver_sql(
            "BEGIN" if conn.get_execution_options().get(READ_ONLY_OPTION) else "BEGIN IMMEDIATE"
        )

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: services return ORM rows that routers serialize after the commit.
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session], *, read_only: bool = False) -> Iterator[Session]:
    """One unit of work: commit when the block succeeds, roll back when it raises.

    ``read_only`` begins SQLite transactions deferred (no write lock; a write inside may fail with
    "database is locked" when another writer committed first); elsewhere it changes nothing.
    """
    session = factory()
    if read_only:
        session.connection(execution_options={READ_ONLY_OPTION: True})
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()

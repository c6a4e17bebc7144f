"""What every ``cimcal`` subcommand module shares: the registry of subcommands and a database session."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeAlias

from sqlalchemy.orm import Session

from app.config import Settings
from app.db import migrate
from app.db.session import make_engine, make_session_factory, session_scope

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

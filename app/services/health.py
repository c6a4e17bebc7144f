"""Readiness: is the database reachable, and is it migrated?"""

from __future__ import annotations

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from app.db import migrate


def database_status(engine: Engine) -> str:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            current = migrate.current_revision(conn)
    except SQLAlchemyError as e:
        return f"unreachable: {type(e).__name__}"
    head = migrate.head_revision()
    return "ok" if current == head else f"schema at {current}, expected {head}: run `cimcal db upgrade`"

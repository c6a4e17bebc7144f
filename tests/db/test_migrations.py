"""The migrations build exactly the schema the models declare, on both backends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import Engine, inspect

from app.config import Settings
from app.db import migrate
from app.db.session import make_engine
from app.db.tables import Base
from app.main import create_app

ROOT = Path(__file__).resolve().parents[2]


def test_autogenerate_finds_no_difference(migrated_engine: Engine) -> None:
    with migrated_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_database_is_at_head(migrated_engine: Engine) -> None:
    with migrated_engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision() is not None


def test_upgrade_builds_every_table_on_a_fresh_sqlite_and_is_repeatable(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    migrate.upgrade(engine)
    migrate.upgrade(engine)  # a second run is a no-op
    assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    engine.dispose()


def test_service_upgrades_a_fresh_sqlite_on_start(tmp_path: Path) -> None:
    db = tmp_path / "new" / "cimcal.db"
    db.parent.mkdir()
    settings = Settings(database_url=f"sqlite:///{db}", auto_migrate=True, image_store_dir=tmp_path / "img")
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json()["checks"]["database"] == "ok"
    engine = make_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()
    engine.dispose()


def test_alembic_command_line_works_from_another_directory(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    env = {**os.environ, "CIMCAL_DATABASE_URL": f"sqlite:///{db}"}
    alembic = Path(sys.executable).with_name("alembic")
    done = subprocess.run(
        [str(alembic), "-c", str(ROOT / "alembic.ini"), "upgrade", "head"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    engine = make_engine(f"sqlite:///{db}")
    assert "die" in inspect(engine).get_table_names()
    engine.dispose()

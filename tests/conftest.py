"""Real databases for the tests: a SQLite file and a fresh PostgreSQL database per test session.

Fixtures parametrized over ``["sqlite", "postgres"]`` (``engine`` and everything built on it: the
session factory, the app, ``client``) run each test once per backend. PostgreSQL must be up on
127.0.0.1:5432 (``.ci/run`` starts it); ``CIMCAL_TEST_PG_URL`` points elsewhere.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import migrate
from app.db.session import make_engine, make_session_factory, session_scope
from app.db.tables import Base, Role
from app.main import create_app
from app.services import auth

PG_ADMIN_URL = os.environ.get("CIMCAL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"cimcal_test_{secrets.token_hex(4)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as e:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL is not reachable at {make_url(PG_ADMIN_URL).render_as_string()}: {e.orig}\n"
            "Start it (.ci/run does: pg_ctlcluster <version> main start) or set CIMCAL_TEST_PG_URL.",
            pytrace=False,
        )
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'cimcal.db'}"


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture(scope="session")
def migrated_engine(database_url: str) -> Iterator[Engine]:
    """The backend's database, upgraded to head once per test session."""
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def _empty_tables(engine: Engine) -> None:
    # DELETE beats TRUNCATE on PostgreSQL for a handful of rows (TRUNCATE rewrites every table).
    with engine.begin() as conn:
        for t in reversed(Base.metadata.sorted_tables):
            conn.execute(t.delete())


@pytest.fixture
def engine(migrated_engine: Engine) -> Iterator[Engine]:
    """A migrated database, emptied after each test."""
    yield migrated_engine
    _empty_tables(migrated_engine)


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work for a service test; committed at the end of the test when it passes."""
    with session_scope(session_factory) as s:
        yield s


SHARED_CACHE_DIR = Path.home() / ".cache" / "cimcal" / "tests"


def _test_settings(database_url: str, tmp: Path) -> Settings:
    return Settings(
        database_url=database_url,
        auto_migrate=False,  # migrated once per session above; tests/db checks the start-up upgrade
        # The KWS evaluation clips and model statistics are shared by every test session of a machine.
        cache_dir=SHARED_CACHE_DIR,
        eval_clips_per_class=4,
        functional_test_clips=24,
        image_store_dir=tmp / "images",
        auth_enabled=True,
        bootstrap_admin_key=None,
        # One app serves the whole session from one address: tests/api/test_ratelimit.py turns
        # the limits on with its own numbers.
        rate_limit_enabled=False,
    )


@pytest.fixture(scope="session")
def _running_app(migrated_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One started app per backend: building and starting an app per test would dominate the run."""
    url = migrated_engine.url.render_as_string(hide_password=False)
    with TestClient(create_app(_test_settings(url, tmp_path_factory.mktemp("app")))) as client:
        _empty_tables(
            migrated_engine
        )  # tests start from an empty database (start-up stored the reference model)
        yield client


@pytest.fixture
def settings(engine: Engine, tmp_path: Path) -> Settings:
    return _test_settings(engine.url.render_as_string(hide_password=False), tmp_path)


@pytest.fixture
def app(_running_app: TestClient, settings: Settings) -> FastAPI:
    """The started app, with fresh settings for this test (tests may change ``app.state.settings``)."""
    app = _running_app.app
    assert isinstance(app, FastAPI)
    app.state.settings = settings
    # The tables were emptied under the running app: its cached answers describe rows that are gone.
    app.state.serving_cache.clear()
    return app


@pytest.fixture
def client(_running_app: TestClient, app: FastAPI) -> TestClient:
    return _running_app


@pytest.fixture
def api_keys(session_factory: sessionmaker[Session]) -> dict[Role, str]:
    """One key per role, registered in the test's database."""
    keys = {}
    with session_scope(session_factory) as s:
        for role in Role:
            _, keys[role] = auth.create_key(s, role=role, name=f"test-{role.value}", actor="tests")
    return keys


@pytest.fixture
def as_role(api_keys: dict[Role, str]) -> Callable[[Role | str], dict[str, str]]:
    """``client.get(url, headers=as_role("engineer"))``."""

    def headers(role: Role | str) -> dict[str, str]:
        return {"X-API-Key": api_keys[Role(role)]}

    return headers

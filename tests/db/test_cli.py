"""The database-backed ``cimcal`` subcommands, and ``serve`` answering on a real port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import inspect

from app import cli
from app.config import get_settings
from app.db import migrate
from app.db.session import make_engine

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sqlite_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("CIMCAL_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def test_db_upgrade_creates_the_schema(sqlite_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["db", "upgrade"]) == 0
    assert f"revision {migrate.head_revision()}" in capsys.readouterr().out
    engine = make_engine(sqlite_env)
    assert "signature" in inspect(engine).get_table_names()
    engine.dispose()


def test_keys_create_list_revoke(sqlite_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keys", "create", "--role", "station", "--name", "tester-07"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("cim_") and len(key) > 40 and "\n" not in key
    prefix = key[:12]

    assert cli.main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert prefix in listing and "station" in listing and "tester-07" in listing and key not in listing

    assert cli.main(["keys", "revoke", prefix]) == 0
    capsys.readouterr()
    assert cli.main(["keys", "list"]) == 0
    assert prefix not in capsys.readouterr().out
    assert cli.main(["keys", "list", "--all"]) == 0
    assert "revoked" in capsys.readouterr().out

    assert cli.main(["keys", "revoke", "cim_nothere"]) == 1
    assert "no API key" in capsys.readouterr().err


def test_unknown_role_is_a_usage_error(sqlite_env: str) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["keys", "create", "--role", "root"])
    assert e.value.code == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_answers_on_its_port(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "CIMCAL_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-level", "warning"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "cimcal serve did not answer within 30 s"
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["status"] == "ready"
    finally:
        proc.terminate()
        proc.wait(timeout=10)

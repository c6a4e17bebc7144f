"""``cimcal serve --workers N``: real server processes, one job runner among them."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SHARED_CACHE_DIR = Path.home() / ".cache" / "cimcal" / "tests"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serve(tmp: Path, admin: str, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    port = _free_port()
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CIMCAL_DATABASE_URL": f"sqlite:///{tmp / 'serve.db'}",
        "CIMCAL_IMAGE_STORE_DIR": str(tmp / "images"),
        "CIMCAL_CACHE_DIR": str(SHARED_CACHE_DIR),
        "CIMCAL_EVAL_CLIPS_PER_CLASS": "4",
        "CIMCAL_FUNCTIONAL_TEST_CLIPS": "24",
        "CIMCAL_CHARACTERIZE_BUDGET": "4096",
        "CIMCAL_TEST_SITES": "1",
        "CIMCAL_BOOTSTRAP_ADMIN_KEY": admin,
        **(env or {}),
    }
    log = tmp / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-level", "info", *args]
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, env=environment, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _post_job(base: str, admin: str, lot_id: str) -> int:
    h = {"X-API-Key": admin}
    lot = {"lot_id": lot_id, "product": "KWS", "wafers": [{"number": 1, "sites": [[0, 0], [1, 0]]}]}
    # A new connection per request: the kernel hands each to whichever worker accepts it first.
    assert httpx.post(f"{base}/v1/lots", json=lot, headers=h).status_code == 201
    r = httpx.post(f"{base}/v1/lots/{lot_id}/calibrate", json={"steps": ["characterize"]}, headers=h)
    assert r.status_code == 202, r.text
    return int(r.json()["id"])


def _wait_finished(base: str, admin: str, job_ids: list[int], timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(job_ids)
    while pending:
        for job_id in sorted(pending):
            state = httpx.get(f"{base}/v1/jobs/{job_id}", headers={"X-API-Key": admin}).json()["state"]
            if state not in ("queued", "running"):
                assert state == "succeeded", (job_id, state)
                pending.discard(job_id)
        assert time.monotonic() < deadline, f"jobs {sorted(pending)} did not finish"
        time.sleep(0.5)


def test_two_workers_run_one_job_runner_and_every_job_once(tmp_path: Path) -> None:
    admin = "cimcal_test_" + secrets.token_urlsafe(24)
    lock = tmp_path / "runner.lock"
    with _serve(tmp_path, admin, "--workers", "2", env={"CIMCAL_RUNNER_LOCK_FILE": str(lock)}) as base:
        holder = int(lock.read_text())
        workers = [
            p.pid
            for p in psutil.Process(holder).parent().children()
            if "resource_tracker" not in " ".join(p.cmdline())
        ]
        assert holder in workers and len(workers) == 2
        jobs = [_post_job(base, admin, f"LOTW{i}") for i in range(3)]
        # A third server process in the same election never wins it: a job it accepts is run by the
        # elected process of the first server.
        with _serve(tmp_path, admin, env={"CIMCAL_RUNNER_LOCK_FILE": str(lock)}) as other:
            jobs.append(_post_job(other, admin, "LOTX"))
            _wait_finished(base, admin, jobs)
        assert int(lock.read_text()) == holder
    engine = create_engine(f"sqlite:///{tmp_path / 'serve.db'}")
    with engine.connect() as conn:
        signatures = conn.execute(text("SELECT die_id, COUNT(*) FROM signature GROUP BY die_id")).all()
        claimers = conn.execute(text("SELECT DISTINCT claimed_by FROM job_item")).scalars().all()
    engine.dispose()
    # Every die of the four jobs characterized exactly once, and only the elected process claimed.
    assert len(signatures) == 8 and {n for _, n in signatures} == {1}
    assert claimers and {c.split(":")[1] for c in claimers} == {str(holder)}


def test_one_worker_without_the_flag_serves_as_before(tmp_path: Path) -> None:
    admin = "cimcal_test_" + secrets.token_urlsafe(24)
    with _serve(tmp_path, admin) as base:
        _wait_finished(base, admin, [_post_job(base, admin, "LOTS1")])

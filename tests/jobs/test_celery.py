"""Celery + Redis with real worker processes (``cimcal worker``), never eager mode.

The database is a fresh PostgreSQL database (the session's), shared by this process and the
workers; every test run uses its own queue and Redis key prefix, so runs never see each other's
messages. The workers run the light step functions of ``tests.jobs.fake_steps``. This process plays
the API: it sends the chunks and runs the supervisor (:class:`CeleryRunner`). The tests that stop
Redis start a private ``redis-server`` on a free port for it (never the shared one).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import kombu.exceptions
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db import migrate
from app.db.repositories.jobs import lot_dies
from app.db.session import make_engine, make_session_factory, session_scope
from app.db.tables import AuditEvent, Base, Image, JobItem, JobState, Signature, TestResult
from app.jobs.celery_app import CeleryRunner, make_celery
from app.main import create_app
from app.services import auth, jobs
from app.services.jobs import STEP_ORDER, RetryPolicy
from tests.conftest import _test_settings
from tests.jobs.conftest import LOT, add_models, register_lot

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
BROKER_URL = os.environ.get("CIMCAL_TEST_BROKER_URL", "redis://127.0.0.1:6379/0")
VISIBILITY_TIMEOUT_S = 3
LEASE_S = 2.0


@pytest.fixture
def pg_factory(postgres_url: str) -> Iterator[sessionmaker[Session]]:
    engine: Engine = make_engine(postgres_url)
    migrate.upgrade(engine)
    yield make_session_factory(engine)
    with engine.begin() as conn:
        for t in reversed(Base.metadata.sorted_tables):
            conn.execute(t.delete())
    engine.dispose()


@pytest.fixture
def broker() -> Iterator[tuple[str, str]]:
    """(queue, key prefix) unique to this test; every key under the prefix is deleted afterwards."""
    token = secrets.token_hex(4)
    client = redis.Redis.from_url(BROKER_URL)
    try:
        client.ping()
    except redis.ConnectionError as e:
        pytest.fail(f"Redis is not reachable at {BROKER_URL}: {e} (.ci/run starts it)", pytrace=False)
    prefix = f"cimcal-test-{token}:"
    yield f"cimcal.test.{token}", prefix
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def start_worker(
    postgres_url: str, broker: tuple[str, str], tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    queue, prefix = broker

    def start(
        *,
        delay_s: float = 0.0,
        concurrency: int = 2,
        broker_url: str = BROKER_URL,
        visibility_timeout_s: float = VISIBILITY_TIMEOUT_S,
        own_queue: bool = True,
    ) -> subprocess.Popen[bytes]:
        """``own_queue=False``: the default queue and no key prefix (what the API sends to; only on
        a private Redis)."""
        env = {
            **os.environ,
            "CIMCAL_DATABASE_URL": postgres_url,
            "CIMCAL_BROKER_URL": broker_url,
            "CIMCAL_AUTO_MIGRATE": "0",
            "CIMCAL_TEST_STEP_DELAY_S": str(delay_s),
            "PYTHONPATH": str(ROOT),
        }
        log = (tmp_path / f"worker-{len(procs)}.log").open("wb")
        cmd = [sys.executable, "-m", "app.cli", "worker"]
        cmd += ["--queue", queue, "--key-prefix", prefix] if own_queue else []
        cmd += ["--visibility-timeout", str(visibility_timeout_s), "--lease-s", str(LEASE_S)]
        cmd += ["--concurrency", str(concurrency), "--steps", "tests.jobs.fake_steps:build"]
        cmd += ["--log-level", "warning"]
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def sender(
    factory: sessionmaker[Session],
    broker: tuple[str, str],
    *,
    broker_url: str = BROKER_URL,
    supervise_s: float | None = None,
    visibility_timeout_s: float = VISIBILITY_TIMEOUT_S,
) -> CeleryRunner:
    """The API's side: sends chunks of 4 dies; with ``supervise_s``, supervises (call ``start()``)."""
    queue, prefix = broker
    return CeleryRunner(
        make_celery(broker_url, queue=queue, key_prefix=prefix, visibility_timeout_s=visibility_timeout_s),
        factory,
        chunk_dies=4,
        lease_s=LEASE_S,
        supervise_s=supervise_s,
        resend_on_start=False,
    )


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """``private_redis("start" | "kill")`` drives a ``redis-server`` of this test's own on a free port,
    without persistence (a restart loses every queue); returns its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed", pytrace=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    procs: list[subprocess.Popen[bytes]] = []

    def drive(action: str) -> str:
        if action == "kill":
            p = procs[-1]
            p.kill()
            p.wait()
            return url
        log = (tmp_path / f"redis-{len(procs)}.log").open("wb")
        cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path))
        client = redis.Redis.from_url(url)
        wait_for(lambda: _pings(client), 10, "the private redis-server to answer")
        client.close()
        return url

    yield drive
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def create_job(factory: sessionmaker[Session]) -> int:
    with session_scope(factory) as s:
        job = jobs.create_calibration_job(
            s,
            lot_id=LOT,
            steps=STEP_ORDER,
            model="kws@1",
            retry=RetryPolicy(max_attempts=3, backoff_s=0.01),
            actor="tests",
        )
        return job.id


def done_items(factory: sessionmaker[Session], job_id: int) -> int:
    with session_scope(factory) as s:
        return int(
            s.scalar(
                select(func.count()).where(JobItem.job_id == job_id, JobItem.state == JobState.succeeded)
            )
            or 0
        )


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def job_state(factory: sessionmaker[Session], job_id: int) -> str:
    with session_scope(factory) as s:
        return jobs.get_job(s, job_id).state


def per_die_counts(factory: sessionmaker[Session]) -> dict[str, list[int]]:
    """Rows per die of each table, over every die of the lot (0 where a die has none)."""
    out = {}
    with session_scope(factory) as s:
        die_ids = [d for d, _ in lot_dies(s, LOT)]
        for table in (Signature, Image, TestResult):
            counts = {d: n for d, n in s.execute(select(table.die_id, func.count()).group_by(table.die_id))}
            out[table.__tablename__] = [int(counts.get(d, 0)) for d in die_ids]
    return out


ONCE_EACH = {"signature": [1] * 12, "image": [1] * 12, "test_result": [1] * 12}


def test_a_celery_worker_process_calibrates_the_lot(
    pg_factory: sessionmaker[Session],
    broker: tuple[str, str],
    start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    register_lot(pg_factory)
    add_models(pg_factory)
    job_id = create_job(pg_factory)
    assert sender(pg_factory, broker).submit(job_id) == 3  # 12 dies in chunks of 4
    start_worker()
    wait_for(lambda: job_state(pg_factory, job_id) == JobState.succeeded, 90, "the job to succeed")
    assert per_die_counts(pg_factory) == ONCE_EACH
    with session_scope(pg_factory) as s:
        p = jobs.job_progress(s, job_id)
    assert [(st.succeeded, st.failed) for st in p.steps] == [(12, 0)] * 3 and p.dies_per_s


def resends(factory: sessionmaker[Session], job_id: int) -> int:
    with session_scope(factory) as s:
        return int(
            s.scalar(
                select(func.count()).where(
                    AuditEvent.action == "job.resend", AuditEvent.target == f"job:{job_id}"
                )
            )
            or 0
        )


# Recovery must not wait for the visibility timeout: the workers keep the 600-s order of magnitude.
LONG_VISIBILITY_S = 600
RECOVERY_LIMIT_S = 60


def test_a_killed_worker_loses_nothing_and_a_second_one_finishes_the_job_within_a_minute(
    pg_factory: sessionmaker[Session],
    broker: tuple[str, str],
    start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    register_lot(pg_factory)
    add_models(pg_factory)
    job_id = create_job(pg_factory)
    runner = sender(pg_factory, broker, supervise_s=0.5, visibility_timeout_s=LONG_VISIBILITY_S)
    runner.start()
    try:
        runner.submit(job_id)
        first = start_worker(delay_s=0.15, visibility_timeout_s=LONG_VISIBILITY_S)
        wait_for(lambda: done_items(pg_factory, job_id) >= 8, 90, "the first worker to get going")
        os.killpg(first.pid, signal.SIGKILL)  # mid-lot, mid-chunk: no warm shutdown, no acknowledgement
        first.wait()
        assert done_items(pg_factory, job_id) < 36 and job_state(pg_factory, job_id) == JobState.running
        with session_scope(pg_factory) as s:
            orphans = dict(
                s.execute(
                    select(JobItem.id, JobItem.claimed_by).where(
                        JobItem.job_id == job_id, JobItem.state == JobState.running
                    )
                ).all()
            )
        assert orphans  # the dead worker was inside a die

        t0 = time.monotonic()
        start_worker(visibility_timeout_s=LONG_VISIBILITY_S)  # the service is whole again
        wait_for(lambda: job_state(pg_factory, job_id) == JobState.succeeded, 90, "the job to succeed")
        recovery_s = time.monotonic() - t0
    finally:
        runner.stop()
    print(f"killed worker: job finished {recovery_s:.1f} s after the second worker started")
    assert recovery_s < RECOVERY_LIMIT_S
    assert per_die_counts(pg_factory) == ONCE_EACH
    with session_scope(pg_factory) as s:
        p = jobs.job_progress(s, job_id)
        owners = dict(s.execute(select(JobItem.id, JobItem.claimed_by).where(JobItem.id.in_(orphans))).all())
    assert [(st.total, st.succeeded) for st in p.steps] == [(12, 12)] * 3
    assert all(owners[i] != orphans[i] for i in orphans)  # reclaimed by the new worker
    assert resends(pg_factory, job_id) >= 1  # the supervisor, not the visibility timeout, sent them


def test_a_redis_restart_mid_job_loses_nothing_and_the_job_finishes_without_manual_action(
    pg_factory: sessionmaker[Session],
    broker: tuple[str, str],
    start_worker: Callable[..., subprocess.Popen[bytes]],
    private_redis: Callable[[str], str],
) -> None:
    url = private_redis("start")
    register_lot(pg_factory)
    add_models(pg_factory)
    job_id = create_job(pg_factory)
    runner = sender(
        pg_factory, broker, broker_url=url, supervise_s=0.5, visibility_timeout_s=LONG_VISIBILITY_S
    )
    runner.start()
    try:
        runner.submit(job_id)
        start_worker(delay_s=0.1, broker_url=url, visibility_timeout_s=LONG_VISIBILITY_S)
        wait_for(lambda: done_items(pg_factory, job_id) >= 6, 90, "the worker to get going")
        private_redis("kill")  # the queue, the reserved and the unacknowledged chunks: all gone
        assert done_items(pg_factory, job_id) < 36
        time.sleep(1.0)
        private_redis("start")  # an empty Redis on the same port: the service is whole again
        t0 = time.monotonic()
        wait_for(lambda: job_state(pg_factory, job_id) == JobState.succeeded, 90, "the job to succeed")
        recovery_s = time.monotonic() - t0
    finally:
        runner.stop()
    print(f"redis restart: job finished {recovery_s:.1f} s after Redis was back")
    assert recovery_s < RECOVERY_LIMIT_S
    assert per_die_counts(pg_factory) == ONCE_EACH
    assert resends(pg_factory, job_id) >= 1


def test_a_job_posted_while_redis_is_down_runs_once_redis_is_back(
    pg_factory: sessionmaker[Session],
    broker: tuple[str, str],
    start_worker: Callable[..., subprocess.Popen[bytes]],
    private_redis: Callable[[str], str],
) -> None:
    url = private_redis("start")
    register_lot(pg_factory)
    add_models(pg_factory)
    runner = sender(pg_factory, broker, broker_url=url, supervise_s=0.5)
    runner.start()
    try:
        private_redis("kill")
        job_id = create_job(pg_factory)  # what POST /v1/lots/{lot}/calibrate commits ...
        with pytest.raises(kombu.exceptions.OperationalError):
            runner.submit(job_id)  # ... and what its background send then meets
        time.sleep(2.0)  # the supervisor's rounds find the broker away and send nothing
        assert job_state(pg_factory, job_id) == JobState.queued and resends(pg_factory, job_id) == 0
        private_redis("start")
        start_worker(broker_url=url)  # the service is whole again
        t0 = time.monotonic()
        wait_for(lambda: job_state(pg_factory, job_id) == JobState.succeeded, 90, "the job to succeed")
        recovery_s = time.monotonic() - t0
    finally:
        runner.stop()
    print(f"posted while redis was down: job finished {recovery_s:.1f} s after Redis was back")
    assert recovery_s < RECOVERY_LIMIT_S
    assert per_die_counts(pg_factory) == ONCE_EACH
    assert resends(pg_factory, job_id) >= 1


def test_a_job_posted_to_the_api_while_redis_is_down_runs_once_redis_is_back(
    postgres_url: str,
    pg_factory: sessionmaker[Session],
    start_worker: Callable[..., subprocess.Popen[bytes]],
    private_redis: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """The real API (``CIMCAL_JOB_RUNNER=celery``): the POST answers 202 although its background send
    fails; the API's supervisor sends the job once Redis is back."""
    url = private_redis("start")
    register_lot(pg_factory)
    add_models(pg_factory)
    key = auth.generate_key()
    settings = _test_settings(postgres_url, tmp_path).model_copy(
        update={
            "job_runner": "celery",
            "broker_url": url,
            "job_lease_s": LEASE_S,
            "bootstrap_admin_key": SecretStr(key),
        }
    )
    # As a server does, the client gets its 202 whatever the background send meets afterwards.
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        private_redis("kill")
        r = client.post(
            f"/v1/lots/{LOT}/calibrate",
            json={"model": "kws@1", "steps": list(STEP_ORDER)},
            headers={"X-API-Key": key},
        )
        assert r.status_code == 202, r.text
        job_id = int(r.json()["id"])
        time.sleep(2.0)  # the background send failed; the supervisor finds the broker away
        assert job_state(pg_factory, job_id) == JobState.queued and resends(pg_factory, job_id) == 0
        private_redis("start")
        start_worker(broker_url=url, own_queue=False)  # the service is whole again
        t0 = time.monotonic()
        wait_for(lambda: job_state(pg_factory, job_id) == JobState.succeeded, 90, "the job to succeed")
        recovery_s = time.monotonic() - t0
        r = client.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": key})
    print(f"POST while redis was down: job finished {recovery_s:.1f} s after Redis was back")
    assert recovery_s < RECOVERY_LIMIT_S
    assert per_die_counts(pg_factory) == ONCE_EACH
    # Once, or again while the worker was still starting (a duplicate finds claimed dies).
    assert resends(pg_factory, job_id) >= 1
    assert r.json()["state"] == "succeeded" and r.json()["counters"]["dies_succeeded"] == 12

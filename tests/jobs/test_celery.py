"""Celery + Redis with real worker processes (``cimcal worker``), never eager mode.

The database is a fresh PostgreSQL database (the session's), shared by this process and the
workers; every test run uses its own queue and Redis key prefix, so runs never see each other's
messages. The workers run the light step functions of ``tests.jobs.fake_steps``.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db import migrate
from app.db.repositories.jobs import lot_dies
from app.db.session import make_engine, make_session_factory, session_scope
from app.db.tables import Base, Image, JobItem, JobState, Signature, TestResult
from app.jobs.celery_app import CeleryRunner, make_celery
from app.services import jobs
from app.services.jobs import STEP_ORDER, RetryPolicy
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

    def start(*, delay_s: float = 0.0, concurrency: int = 2) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "CIMCAL_DATABASE_URL": postgres_url,
            "CIMCAL_BROKER_URL": BROKER_URL,
            "CIMCAL_AUTO_MIGRATE": "0",
            "CIMCAL_TEST_STEP_DELAY_S": str(delay_s),
            "PYTHONPATH": str(ROOT),
        }
        log = (tmp_path / f"worker-{len(procs)}.log").open("wb")
        cmd = [sys.executable, "-m", "app.cli", "worker", "--queue", queue, "--key-prefix", prefix]
        cmd += ["--visibility-timeout", str(VISIBILITY_TIMEOUT_S), "--lease-s", str(LEASE_S)]
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


def sender(factory: sessionmaker[Session], broker: tuple[str, str]) -> CeleryRunner:
    queue, prefix = broker
    return CeleryRunner(
        make_celery(BROKER_URL, queue=queue, key_prefix=prefix, visibility_timeout_s=VISIBILITY_TIMEOUT_S),
        factory,
        chunk_dies=4,
    )


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


def test_a_killed_worker_loses_nothing_and_no_die_is_processed_twice(
    pg_factory: sessionmaker[Session],
    broker: tuple[str, str],
    start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    register_lot(pg_factory)
    add_models(pg_factory)
    job_id = create_job(pg_factory)
    sender(pg_factory, broker).submit(job_id)
    first = start_worker(delay_s=0.15)
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

    start_worker()  # its chunks come back after the visibility timeout, its dies after the lease
    wait_for(lambda: job_state(pg_factory, job_id) == JobState.succeeded, 120, "the job to succeed")
    assert per_die_counts(pg_factory) == ONCE_EACH
    with session_scope(pg_factory) as s:
        p = jobs.job_progress(s, job_id)
    assert [(st.total, st.succeeded) for st in p.steps] == [(12, 12)] * 3
    with session_scope(pg_factory) as s:
        owners = dict(s.execute(select(JobItem.id, JobItem.claimed_by).where(JobItem.id.in_(orphans))).all())
    assert all(owners[i] != orphans[i] for i in orphans)  # reclaimed by the new worker

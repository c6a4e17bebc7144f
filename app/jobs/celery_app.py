"""Celery + Redis: the scale-out runner. ``celery -A app.jobs.celery_app worker`` or ``cimcal worker``.

A task carries IDs only (a job ID and a chunk of die IDs) and runs
:func:`app.services.jobs.process_chunk`. Delivery is at-least-once and the database makes it
effectively exactly-once:

* ``acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only after its chunk is
  done, so the chunk of a killed worker goes back to the queue;
* ``worker_prefetch_multiplier = 1``: a worker reserves one chunk per slot, no more;
* Redis has no real acknowledgements: kombu keeps unacknowledged messages aside and puts them back
  once they are older than the **visibility timeout**. It must exceed the longest a message stays
  unacknowledged: its chunk's run, and a busy-die retry's countdown of one lease (a countdown message
  is held unacknowledged by a worker until it is due; one held longer than the timeout is delivered
  again, and again). :func:`derive_visibility_timeout` derives it from the lease and the chunk size
  (lease + chunk dies x :data:`DIE_BUDGET_S`: 300 s for the defaults, instead of Celery's 600 s). A
  dead worker's chunk does not wait for it: the supervisor (:mod:`app.jobs.base`, run by the sender,
  i.e. the API process) re-sends a job that has no live claim once the broker's queue is empty.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_shutdown
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings, get_settings
from app.db import migrate
from app.db.session import make_engine, make_session_factory
from app.jobs.base import DEFAULT_CHUNK_DIES, DEFAULT_LEASE_S, DEFAULT_SUPERVISE_S, JobRunner
from app.services import jobs as jobs_service
from app.services.jobs import ExecutionContext, StepFunctions

log = logging.getLogger(__name__)

TASK_NAME = "cimcal.jobs.process_chunk"
DEFAULT_QUEUE = "cimcal.jobs"
DB_RETRY_S = 10
# The longest one die's steps are expected to take: ~10 s for all three on a busy 2-core station
# (docs/jobs.md, Throughput), with a 3x margin.
DIE_BUDGET_S = 30.0


def derive_visibility_timeout(
    lease_s: float = DEFAULT_LEASE_S, chunk_dies: int = DEFAULT_CHUNK_DIES
) -> float:
    """Seconds an unacknowledged message may stay with a worker: a busy retry's countdown (one lease)
    plus the run of a chunk of ``chunk_dies`` dies at :data:`DIE_BUDGET_S` each."""
    return lease_s + chunk_dies * DIE_BUDGET_S


DEFAULT_VISIBILITY_TIMEOUT_S = derive_visibility_timeout()


def make_celery(
    broker_url: str,
    *,
    queue: str = DEFAULT_QUEUE,
    key_prefix: str | None = None,
    visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
) -> Celery:
    """A Celery app on ``broker_url``; ``key_prefix`` isolates every Redis key (tests, several
    stations on one Redis)."""
    app = Celery("cimcal", broker=broker_url, set_as_current=False)
    transport: dict[str, Any] = {
        "visibility_timeout": visibility_timeout_s,
        # Sweep for abandoned messages often enough to honour a short visibility timeout.
        "unacked_restore_interval": max(1, min(10, int(visibility_timeout_s // 5))),
        "unacked_restore_throttle": 1,
    }
    if key_prefix:
        transport["global_keyprefix"] = key_prefix
    app.conf.update(
        task_default_queue=queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        # cimcal's own knobs, read by the worker's context (see worker_context()).
        cimcal_steps=None,
        cimcal_lease_s=DEFAULT_LEASE_S,
    )
    app.task(name=TASK_NAME, bind=True, max_retries=None)(_process_chunk_task)
    return app


def _process_chunk_task(task: Any, job_id: int, die_ids: list[int]) -> dict[str, Any]:
    ctx = worker_context(task.app)
    try:
        result = jobs_service.process_chunk(ctx, job_id, die_ids)
    except OperationalError as e:  # the database is away: keep the chunk, try again later
        raise task.retry(exc=e, countdown=DB_RETRY_S) from e
    if result.busy and not result.stopped:
        # Another worker holds these dies; if it died, its lease runs out: look again after it.
        task.app.send_task(TASK_NAME, args=[job_id, result.busy], countdown=ctx.lease_s)
    return {"processed": len(result.processed), "busy": len(result.busy), "stopped": result.stopped}


# ---------------------------------------------------------------------------------- worker side
_context: ExecutionContext | None = None
_context_lock = threading.Lock()


def load_steps(path: str | None, context_factory: Any, settings: Settings) -> StepFunctions:
    """The step functions named by ``module:function`` (called with the session factory and the
    settings), or the real calibration use cases when ``path`` is None."""
    if path is None:
        from app.jobs.steps import calibration_steps

        return calibration_steps(context_factory, settings)
    module, _, attr = path.partition(":")
    build = getattr(importlib.import_module(module), attr)
    steps = build(context_factory, settings)
    if not isinstance(steps, StepFunctions):
        raise TypeError(f"{path} returned {type(steps).__name__}, not StepFunctions")
    return steps


def worker_context(app: Celery) -> ExecutionContext:
    """This worker process's context, built on first use (after a prefork fork, never before)."""
    global _context
    with _context_lock:
        if _context is None:
            settings = get_settings()
            engine = make_engine(settings.database_url)
            if settings.auto_migrate:
                migrate.upgrade(engine)
            factory = make_session_factory(engine)
            steps = load_steps(app.conf.cimcal_steps, factory, settings)
            _context = ExecutionContext(factory, steps, lease_s=float(app.conf.cimcal_lease_s))
            _context.start()
            log.info("job worker %s ready (lease %.0f s)", _context.owner, _context.lease_s)
        return _context


@worker_shutdown.connect
def _stop_context(**_: Any) -> None:
    if _context is not None:
        _context.stop()


def run_worker(
    *,
    concurrency: int = 1,
    pool: str = "threads",
    queue: str = DEFAULT_QUEUE,
    key_prefix: str | None = None,
    visibility_timeout_s: float | None = None,
    lease_s: float = DEFAULT_LEASE_S,
    steps: str | None = None,
    loglevel: str = "info",
) -> int:
    """Run a worker in this process until it is stopped (``cimcal worker``); the visibility timeout
    defaults to :func:`derive_visibility_timeout` of the lease."""
    if visibility_timeout_s is None:
        visibility_timeout_s = derive_visibility_timeout(lease_s)
    global celery_app
    celery_app = make_celery(
        get_settings().broker_url,
        queue=queue,
        key_prefix=key_prefix,
        visibility_timeout_s=visibility_timeout_s,
    )
    celery_app.conf.update(cimcal_steps=steps, cimcal_lease_s=lease_s)
    argv = [
        "worker",
        f"--queues={queue}",
        f"--concurrency={concurrency}",
        f"--pool={pool}",
        f"--loglevel={loglevel.upper()}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    celery_app.worker_main(argv)
    return 0


# ---------------------------------------------------------------------------------- sender side
class CeleryRunner(JobRunner):
    """Sends chunks to the Celery queue; workers anywhere process them. Reading open dies needs the
    database (``factory``); nothing runs in this process but the supervisor, which re-sends stalled
    jobs once the broker's queue is empty (``lease_s``: the workers' lease)."""

    name = "celery"

    def __init__(
        self,
        app: Celery,
        factory: sessionmaker[Session],
        *,
        chunk_dies: int = DEFAULT_CHUNK_DIES,
        resend_on_start: bool = True,
        lease_s: float = DEFAULT_LEASE_S,
        supervise_s: float | None = DEFAULT_SUPERVISE_S,
        quiet_s: float | None = None,
    ) -> None:
        super().__init__(
            chunk_dies, factory=factory, lease_s=lease_s, supervise_s=supervise_s, quiet_s=quiet_s
        )
        self.factory: sessionmaker[Session] = factory
        self.app = app
        self.queue = str(app.conf.task_default_queue)
        self.resend_on_start = resend_on_start

    def start(self) -> None:
        # A job committed just before the API process died may never have been sent: send the
        # never-started ones again (a duplicate chunk only finds claimed dies).
        if self.resend_on_start:
            try:
                for job_id in jobs_service.open_job_ids(self.factory, state="queued"):
                    self.submit(job_id)
            except Exception:  # the broker is down: serve anyway; the supervisor sends them later
                log.warning("could not re-send queued jobs to the broker", exc_info=True)
        self.start_supervisor()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.stop_supervisor()

    def backlog(self) -> int:
        """Messages waiting in the broker's queue (not those workers hold); raises when the broker
        is unreachable."""
        with self.app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.5, timeout=5)
            with conn.channel() as channel:
                # Declared as Celery declares it (a passive declare misses prefixed queues on Redis).
                ok = channel.queue_declare(queue=self.queue, durable=True, auto_delete=False)
                return int(ok.message_count)

    def _may_resend(self) -> bool:
        # Chunks still in the queue will reach a worker (or none is running: more would not help).
        try:
            return self.backlog() == 0
        except Exception as e:
            log.warning("job supervisor: broker unreachable (%s); trying again later", e)
            return False

    def _send(self, job_id: int, die_ids: list[int]) -> None:
        self.app.send_task(TASK_NAME, args=[job_id, die_ids])


# `celery -A app.jobs.celery_app worker` finds this.
celery_app = make_celery(get_settings().broker_url)

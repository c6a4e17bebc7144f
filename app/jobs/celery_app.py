"""Celery + Redis: the scale-out runner. ``celery -A app.jobs.celery_app worker`` or ``cimcal worker``.

A task carries IDs only (a job ID and a chunk of die IDs) and runs
:func:`app.services.jobs.process_chunk`. Delivery is at-least-once and the database makes it
effectively exactly-once:

* ``acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only after its chunk is
  done, so the chunk of a killed worker goes back to the queue;
* ``worker_prefetch_multiplier = 1``: a worker reserves one chunk per slot, no more;
* Redis has no real acknowledgements: kombu keeps unacknowledged messages aside and puts them back
  once they are older than the **visibility timeout**. It must exceed the longest a message stays
  unacknowledged (waiting in the worker's reservation + running its chunk + a busy-die retry
  countdown of one lease); shorter means a healthy chunk is delivered twice (harmless, but the
  second delivery only finds claimed dies), longer means a dead worker's chunk waits longer.
  ``DEFAULT_VISIBILITY_TIMEOUT_S`` (10 min) covers chunks of :data:`~app.jobs.base.DEFAULT_CHUNK_DIES`
  dies at seconds per die with a wide margin.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_shutdown
from sqlalchemy.exc import OperationalError

from app.config import Settings, get_settings
from app.db import migrate
from app.db.session import make_engine, make_session_factory
from app.jobs.base import DEFAULT_CHUNK_DIES, JobRunner
from app.services import jobs as jobs_service
from app.services.jobs import ExecutionContext, StepFunctions

log = logging.getLogger(__name__)

TASK_NAME = "cimcal.jobs.process_chunk"
DEFAULT_QUEUE = "cimcal.jobs"
DEFAULT_VISIBILITY_TIMEOUT_S = 600
DEFAULT_LEASE_S = 60.0
DB_RETRY_S = 10


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
    visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
    lease_s: float = DEFAULT_LEASE_S,
    steps: str | None = None,
    loglevel: str = "info",
) -> int:
    """Run a worker in this process until it is stopped (``cimcal worker``)."""
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
    database (``factory``); nothing runs in this process."""

    name = "celery"

    def __init__(
        self, app: Celery, factory: Any, *, chunk_dies: int = DEFAULT_CHUNK_DIES, resend_on_start: bool = True
    ) -> None:
        super().__init__(chunk_dies)
        self.app = app
        self.factory = factory
        self.resend_on_start = resend_on_start

    def start(self) -> None:
        # A job committed just before the API process died may never have been sent: send the
        # never-started ones again (a duplicate chunk only finds claimed dies).
        if not self.resend_on_start:
            return
        try:
            for job_id in jobs_service.open_job_ids(self.factory, state="queued"):
                self.submit(job_id)
        except Exception:  # the broker is down: serve anyway; `cimcal jobs resume` sends them later
            log.warning("could not re-send queued jobs to the broker", exc_info=True)

    def _open_die_ids(self, job_id: int) -> list[int]:
        return jobs_service.open_die_ids(self.factory, job_id)

    def _open_job_ids(self) -> list[int]:
        return jobs_service.open_job_ids(self.factory)

    def _send(self, job_id: int, die_ids: list[int]) -> None:
        self.app.send_task(TASK_NAME, args=[job_id, die_ids])


# `celery -A app.jobs.celery_app worker` finds this.
celery_app = make_celery(get_settings().broker_url)

"""Batch calibration jobs: create, read progress, cancel, and process a chunk of dies.

The job's truth lives in the database: one ``job`` row and one ``job_item`` per (die, step). A runner
(:mod:`app.jobs`) only decides *where* :func:`process_chunk` runs (an in-process thread pool or a
Celery worker) and hands it IDs; every per-die write is done by an idempotent use case, so a chunk
that is delivered twice, or resumed after a crash, changes nothing that was already done.

Per die, the job's steps run in order (characterize -> compensate -> functional-test). Hardware
errors:

* transient (:data:`hardware.driver.TRANSIENT_ERRORS`): retried with exponential back-off up to the
  job's :class:`RetryPolicy`; after the last attempt the die gets the alarm bin (0) with the reason
  and the job goes on;
* :class:`~hardware.driver.DieFault`: not retried; the die gets the die-fault bin with the reason
  (``steps.alarm(..., die_fault=True)``); any other hardware error (a protocol error, a lost tester)
  is not retried either and gets the alarm bin;
* a service error (e.g. compensating a die without a signature) fails the item with its message;
* a database error (``OperationalError``: connection lost, SQLite busy) is not the die's fault: the
  chunk stops, the die's claims are handed back and the runner runs the chunk again later.

A step whose earlier step failed on that die is not run (failed, "not run: <step> failed").

Modules: :mod:`~app.services.jobs.params` (what a job does), :mod:`~app.services.jobs.queries`
(create, read, cancel), :mod:`~app.services.jobs.context` (step functions, worker identity, claim
heartbeat), :mod:`~app.services.jobs.execution` (:func:`process_chunk`). Imports flow in that order.
"""

from __future__ import annotations

from app.services.jobs.context import ExecutionContext, Heartbeat, StepCall, StepFn, StepFunctions, worker_id
from app.services.jobs.execution import ChunkResult, process_chunk
from app.services.jobs.params import (
    JOB_KIND,
    NEEDS_MODEL,
    OPEN_STATES,
    STEP_ORDER,
    TERMINAL_STATES,
    DieSelection,
    JobParams,
    RetryPolicy,
    in_sample,
    ordered_steps,
    parse_model_ref,
)
from app.services.jobs.queries import (
    JobProgress,
    StepProgress,
    cancel_job,
    chunks,
    create_calibration_job,
    get_job,
    job_progress,
    list_jobs,
    open_die_ids,
    open_job_ids,
    record_resend,
    stalled_job_ids,
)

__all__ = [
    "JOB_KIND",
    "NEEDS_MODEL",
    "OPEN_STATES",
    "STEP_ORDER",
    "TERMINAL_STATES",
    "ChunkResult",
    "DieSelection",
    "ExecutionContext",
    "Heartbeat",
    "JobParams",
    "JobProgress",
    "RetryPolicy",
    "StepCall",
    "StepFn",
    "StepFunctions",
    "StepProgress",
    "cancel_job",
    "chunks",
    "create_calibration_job",
    "get_job",
    "in_sample",
    "job_progress",
    "list_jobs",
    "open_die_ids",
    "open_job_ids",
    "ordered_steps",
    "parse_model_ref",
    "process_chunk",
    "record_resend",
    "stalled_job_ids",
    "worker_id",
]

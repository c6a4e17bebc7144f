"""Batch runners for calibration jobs.

A runner decides where :func:`app.services.jobs.process_chunk` runs: :class:`~app.jobs.runner.LocalRunner`
(threads in this process, the default; needs no other service) or Celery workers fed through Redis
(:mod:`app.jobs.celery_app`, ``CIMCAL_JOB_RUNNER=celery``, ``cimcal worker``). Both hand over IDs
only (a job ID and a chunk of die IDs); the state lives in the database. See ``docs/jobs.md``.

Imports flow one way: :mod:`~app.jobs.base` (the runner interface and its supervisor) <-
:mod:`~app.jobs.runner` and :mod:`~app.jobs.celery_app` <- :mod:`~app.jobs.build` (``build_runner``,
the one module that knows both).
"""

"""The runner the settings name (``CIMCAL_JOB_RUNNER``): the one place that knows both runners."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.jobs.base import JobRunner
from app.jobs.runner import LocalRunner
from app.services.jobs import ExecutionContext, StepFunctions

if TYPE_CHECKING:
    from app.services.hardware import DriverPool
    from app.services.images import ImageStore
    from app.services.runtime import ModelRuntimes


def build_runner(
    settings: Settings,
    factory: sessionmaker[Session],
    steps: StepFunctions | None = None,
    *,
    workers: int | None = None,
    resume_on_start: bool = True,
    pool: DriverPool | None = None,
    runtimes: ModelRuntimes | None = None,
    store: ImageStore | None = None,
) -> JobRunner:
    """The runner ``settings.job_runner`` names. ``local`` runs ``steps`` (default: the calibration
    use cases on ``pool``, ``runtimes`` and ``store``, the service's own when it passes them) on
    ``workers`` threads (default: one per test site, ``CIMCAL_TEST_SITES``)."""
    if settings.job_runner == "celery":
        from app.jobs.celery_app import CeleryRunner, derive_visibility_timeout, make_celery

        return CeleryRunner(
            make_celery(
                settings.broker_url, visibility_timeout_s=derive_visibility_timeout(settings.job_lease_s)
            ),
            factory,
            resend_on_start=resume_on_start,
            lease_s=settings.job_lease_s,
        )
    if steps is None:
        from app.jobs.steps import calibration_steps

        steps = calibration_steps(factory, settings, pool=pool, runtimes=runtimes, store=store)
    n = workers if workers is not None else settings.test_sites
    context = ExecutionContext(factory, steps, lease_s=settings.job_lease_s)
    return LocalRunner(context, workers=n, resume_on_start=resume_on_start)

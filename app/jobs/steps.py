"""The step functions of a calibration job bound to the real use cases of
:mod:`app.services.calibration`, this process's test sites (a :class:`DriverPool`), model runtimes
and image store. Each is built on first use, so a process that never runs a job never connects a
tester nor loads evaluation data; the service passes its own so that HTTP requests and jobs share
the test sites."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.services.jobs import StepCall, StepFunctions

if TYPE_CHECKING:  # imported on first use: the numerics and the model runtime are heavy
    from app.services.alarms import JobAttempt
    from app.services.hardware import DriverPool
    from app.services.images import ImageStore
    from app.services.runtime import ModelRuntimes

T = TypeVar("T")


class _Lazy(Generic[T]):
    def __init__(self, make: Callable[[], T], value: T | None = None) -> None:
        self._make = make
        self._value = value
        self._lock = threading.Lock()

    def get(self) -> T:
        with self._lock:
            if self._value is None:
                self._value = self._make()
            return self._value


def calibration_steps(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    pool: DriverPool | None = None,
    runtimes: ModelRuntimes | None = None,
    store: ImageStore | None = None,
) -> StepFunctions:
    """Characterize, compensate, functional-test and alarm through :mod:`app.services.calibration`."""

    def make_pool() -> DriverPool:
        from app.services.hardware import DriverPool

        return DriverPool.from_settings(settings)

    def make_runtimes() -> ModelRuntimes:
        from app.services.runtime import ModelRuntimes

        return ModelRuntimes(settings)

    def make_store() -> ImageStore:
        from app.services.images import ImageStore

        return ImageStore(settings.image_store_dir)

    sites = _Lazy(make_pool, pool)
    models = _Lazy(make_runtimes, runtimes)
    images = _Lazy(make_store, store)

    def characterize(call: StepCall) -> object:
        from app.services import calibration

        _not_alarmed(call)
        return calibration.characterize_die(
            factory,
            sites.get(),
            call.ecid,
            force=call.force,
            budget=settings.characterize_budget,
            actor=_actor(call),
        )

    def compensate(call: StepCall) -> object:
        from app.services import calibration

        assert call.model is not None
        _not_alarmed(call)
        return calibration.compensate_die(
            factory, models.get(), images.get(), call.ecid, call.model, actor=_actor(call)
        )

    def functional_test(call: StepCall) -> object:
        from app.services import calibration

        assert call.model is not None
        _not_alarmed(call)
        return calibration.functional_test_die(
            factory,
            sites.get(),
            models.get(),
            images.get(),
            settings,
            call.ecid,
            call.model,
            force=call.force,
            actor=_actor(call),
            job=_attempt(call),
        )

    def _not_alarmed(call: StepCall) -> None:
        # A redelivered chunk whose die already ended in an alarm under this item: no retest.
        from app.services import alarms

        if call.item_id is not None:
            alarms.ensure_not_alarmed(factory, call.item_id)

    def alarm(call: StepCall, reason: str, die_fault: bool) -> None:
        from app.services import alarms

        alarms.record_alarm(
            factory,
            call.ecid,
            call.model,
            call.step,
            reason,
            die_fault=die_fault,
            code=getattr(call.error, "code", None),
            provenance=alarms.site_of(call.error),
            job=_attempt(call),
            actor=_actor(call),
        )

    return StepFunctions(characterize, compensate, functional_test, alarm)


def _actor(call: StepCall) -> str:
    return f"job:{call.job_id}"


def _attempt(call: StepCall) -> JobAttempt | None:
    from app.services.alarms import JobAttempt

    if call.item_id is None or call.attempt is None:
        return None
    return JobAttempt(call.item_id, call.attempt)

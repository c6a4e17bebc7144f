"""The step functions of a calibration job bound to the real use cases of
:mod:`app.services.calibration` and this process's test sites (a :class:`DriverPool`)."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.services.jobs import StepCall, StepFunctions


class _Sites:
    """The driver pool, built on first use: a service that never runs a job never connects."""

    def __init__(self, settings: Settings, pool: Any | None) -> None:
        self.settings = settings
        self._pool = pool
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._pool is None:
                from app.services.hardware import DriverPool  # type: ignore[attr-defined]

                self._pool = DriverPool.from_settings(self.settings)
            return self._pool


def calibration_steps(
    factory: sessionmaker[Session], settings: Settings, pool: Any | None = None
) -> StepFunctions:
    """Characterize, compensate and functional-test through :mod:`app.services.calibration`."""
    sites = _Sites(settings, pool)

    def characterize(call: StepCall) -> object:
        from app.services import calibration  # type: ignore[attr-defined]

        return calibration.characterize_die(factory, sites.get(), call.ecid, force=call.force)

    def compensate(call: StepCall) -> object:
        from app.services import calibration

        assert call.model is not None
        return calibration.compensate_die(factory, call.ecid, call.model)

    def functional_test(call: StepCall) -> object:
        from app.services import calibration

        assert call.model is not None
        return calibration.functional_test_die(factory, sites.get(), call.ecid, call.model, force=call.force)

    def alarm(call: StepCall, reason: str) -> None:
        from app.services import calibration

        calibration.record_alarm(factory, call.ecid, call.model, call.step, reason)

    return StepFunctions(characterize, compensate, functional_test, alarm)

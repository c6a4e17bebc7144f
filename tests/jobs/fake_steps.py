"""Light step functions for the job tests: real database writes and real simulated-driver calls,
cheap enough to run a lot in seconds.

* characterize: skip a die with a current signature (unless forced); else probe the die, read one
  macro with a few vectors and record a signature through :func:`app.services.signatures.record_signature`;
* compensate: one ``image`` row per (die, model, current signature), idempotent;
* functional test: probe, one ``test_result`` per (die, image) unless forced;
* alarm: a ``test_result`` with hard and soft bin 0 (tester alarm) or 9/99 (die fault).

``build(factory, settings)`` is what a worker process loads with ``cimcal worker --steps
tests.jobs.fake_steps:build``. ``CIMCAL_TEST_STEP_DELAY_S`` slows every step down (crash tests).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.repositories import dies as dies_repo
from app.db.repositories import models as models_repo
from app.db.repositories import signatures as signatures_repo
from app.db.session import session_scope
from app.db.tables import Image, TestResult
from app.errors import InvalidInputError, NotFoundError
from app.services import signatures
from app.services.hardware import build_driver
from app.services.jobs import StepCall, StepFunctions
from hardware.driver import DieAddress, Driver


@dataclass
class StepLog:
    """What the step functions did in this process (for assertions on tester use)."""

    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    probes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, step: str, ecid: str) -> None:
        with self.lock:
            self.calls[(step, ecid)] += 1


def _model_id(session: Session, model_ref: str) -> int:
    name, _, version = model_ref.partition("@")
    model = models_repo.get(session, name, version)
    if model is None:
        raise NotFoundError(f"no model {model_ref}")
    return model.id


def build(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    delay_s: float | None = None,
    log: StepLog | None = None,
) -> StepFunctions:
    local = threading.local()
    delay = float(os.environ.get("CIMCAL_TEST_STEP_DELAY_S", "0")) if delay_s is None else delay_s
    step_log = log if log is not None else StepLog()

    def driver() -> Driver:
        d: Driver | None = getattr(local, "driver", None)
        if d is None:
            d = build_driver(settings)
            d.connect()
            local.driver = d
        return d

    def probe(ecid: str) -> Driver:
        d = driver()
        d.probe(DieAddress.from_ecid(ecid))
        with step_log.lock:
            step_log.probes += 1
        return d

    def characterize(call: StepCall) -> object:
        step_log.record(call.step, call.ecid)
        with session_scope(factory) as s:
            if not call.force and signatures_repo.current(s, call.die_id) is not None:
                return "skipped"
        d = probe(call.ecid)
        g = d.geometry()
        codes = d.read_macro(0, np.ones((4, g.rows), dtype=np.uint8))
        time.sleep(delay)
        with session_scope(factory) as s:
            signatures.record_signature(
                s,
                die_id=call.die_id,
                blob=codes.tobytes(),
                reads=int(codes.shape[0]),
                tester_s=0.3,
                n_dead_cols=0,
                n_stuck_cells=0,
                offset_spread_mac=float(np.std(codes)),
                actor=f"job:{call.job_id}",
            )
        return "characterized"

    def compensate(call: StepCall) -> object:
        step_log.record(call.step, call.ecid)
        assert call.model is not None
        time.sleep(delay)
        try:
            with session_scope(factory) as s:
                sig = signatures_repo.current(s, call.die_id)
                if sig is None:
                    raise InvalidInputError(f"die {call.ecid} has no signature", code="not_characterized")
                model_id = _model_id(s, call.model)
                exists = s.scalar(
                    select(Image.id).where(
                        Image.die_id == call.die_id, Image.model_id == model_id, Image.signature_id == sig.id
                    )
                )
                if exists is None:
                    content = hashlib.sha256(f"{call.ecid}:{call.model}:{sig.sha256}".encode()).hexdigest()
                    s.add(
                        Image(
                            die_id=call.die_id,
                            model_id=model_id,
                            signature_id=sig.id,
                            ecid=call.ecid,
                            signature_sha256=sig.sha256,
                            content_sha256=content,
                            size_bytes=1024,
                        )
                    )
        except IntegrityError:  # made concurrently: the unique constraint kept one
            pass
        return "compensated"

    def functional_test(call: StepCall) -> object:
        step_log.record(call.step, call.ecid)
        assert call.model is not None
        with session_scope(factory) as s:
            sig = signatures_repo.current(s, call.die_id)
            model_id = _model_id(s, call.model)
            image_id = (
                None
                if sig is None
                else s.scalar(
                    select(Image.id).where(
                        Image.die_id == call.die_id, Image.model_id == model_id, Image.signature_id == sig.id
                    )
                )
            )
            if image_id is None:
                raise InvalidInputError(f"die {call.ecid} has no image for {call.model}", code="no_image")
            done = s.scalar(select(TestResult.id).where(TestResult.image_id == image_id).limit(1))
            if done is not None and not call.force:
                return "skipped"
        probe(call.ecid)
        time.sleep(delay)
        with session_scope(factory) as s:
            s.add(
                TestResult(
                    die_id=call.die_id,
                    model_id=model_id,
                    image_id=image_id,
                    accuracy=0.9,
                    hard_bin=1,
                    soft_bin=1,
                    test_time_s=0.5,
                )
            )
        return "tested"

    def alarm(call: StepCall, reason: str, die_fault: bool) -> None:
        step_log.record("alarm", call.ecid)
        with session_scope(factory) as s:
            model_id = _model_id(s, call.model) if call.model else None
            if model_id is None:  # the tables want a model; tests always pass one
                raise InvalidInputError("alarm without a model")
            die = dies_repo.get_by_ecid(s, call.ecid)
            assert die is not None
            s.add(
                TestResult(
                    die_id=die.id,
                    model_id=model_id,
                    image_id=None,
                    accuracy=None,  # nothing was measured
                    hard_bin=9 if die_fault else 0,
                    soft_bin=99 if die_fault else 0,
                    test_time_s=None,
                    reason=reason,
                )
            )

    return StepFunctions(characterize, compensate, functional_test, alarm)


def steps_with_log(
    factory: sessionmaker[Session], settings: Settings, **kw: Any
) -> tuple[StepFunctions, StepLog]:
    log = StepLog()
    return build(factory, settings, log=log, **kw), log

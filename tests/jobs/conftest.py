"""A small registered lot, two model versions and job contexts over the light step functions."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.session import session_scope
from app.db.tables import Model
from app.services import lots
from app.services.jobs import ExecutionContext, RetryPolicy
from app.services.lots import WaferSpec, rectangular_sites
from tests.jobs.fake_steps import StepLog, steps_with_log

LOT = "JOBLOT1"
MODELS = ("kws@1", "kws@2")
FAST_RETRY = RetryPolicy(max_attempts=3, backoff_s=0.001, backoff_max_s=0.002)


def register_lot(
    factory: sessionmaker[Session], lot_id: str = LOT, *, wafers: int = 2, columns: int = 3, rows: int = 2
) -> list[str]:
    """Register the lot; returns its ECIDs in die order."""
    with session_scope(factory) as s:
        lot = lots.register_lot(
            s,
            lot_id=lot_id,
            product="KWS-BCIM-1",
            wafers=[WaferSpec(n, rectangular_sites(columns, rows)) for n in range(1, wafers + 1)],
            actor="tests",
        )
        lot_id = lot.lot_id
    from app.db.repositories.jobs import lot_dies

    with session_scope(factory) as s:
        return [e for _, e in lot_dies(s, lot_id)]


def add_models(factory: sessionmaker[Session], refs: tuple[str, ...] = MODELS) -> None:
    with session_scope(factory) as s:
        for ref in refs:
            name, _, version = ref.partition("@")
            blob = ref.encode()
            s.add(
                Model(
                    name=name,
                    version=version,
                    blob=blob,
                    sha256=hashlib.sha256(blob).hexdigest(),
                    size_bytes=len(blob),
                    class_names=["yes", "no"],
                    software_accuracy=0.9,
                )
            )


@pytest.fixture
def lot_ecids(session_factory: sessionmaker[Session]) -> list[str]:
    ecids = register_lot(session_factory)
    add_models(session_factory)
    return ecids


@dataclass
class Harness:
    context: ExecutionContext
    log: StepLog


@pytest.fixture
def make_context(
    session_factory: sessionmaker[Session], settings: Settings
) -> Iterator[Callable[..., Harness]]:
    """``make_context(delay_s=0, lease_s=60, **settings_overrides)``: a context over the light steps."""
    made: list[ExecutionContext] = []

    def make(*, delay_s: float = 0.0, lease_s: float = 60.0, **overrides: object) -> Harness:
        s = settings.model_copy(update=overrides)
        steps, log = steps_with_log(session_factory, s, delay_s=delay_s)
        ctx = ExecutionContext(session_factory, steps, lease_s=lease_s, sleep=lambda _: None)
        made.append(ctx)
        return Harness(ctx, log)

    yield make
    for ctx in made:
        ctx.stop()

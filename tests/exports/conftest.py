"""A demo lot whose dies were tested with two models, with bins of their own (tests/dashboard/demo.py)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.db.session import session_scope
from tests.dashboard.demo import DemoLot, add_second_model_results, build_demo_lot


@pytest.fixture
def two_models(session_factory: sessionmaker[Session]) -> tuple[DemoLot, DemoLot]:
    """(the lot as seen with its first, most-tested model, the lot as seen with the second model)."""
    with session_scope(session_factory) as s:
        first = build_demo_lot(s, n_wafers=2, diameter=6)
        return first, add_second_model_results(s, first)

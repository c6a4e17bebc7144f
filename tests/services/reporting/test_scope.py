"""The model a report is of: the one named, else the only one tested on the lot; with several, the
dashboards take the most-tested one (ties: the most recently tested) and the exports refuse."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from app.db.tables import Die
from app.errors import InvalidInputError, NotFoundError
from app.services.reporting.scope import WhenSeveral, lot_scope, parse_model_ref
from tests.services.reporting.conftest import add_model, add_test


def test_no_test_no_model_and_one_model_is_the_default(session: Session, lot: dict[str, Die]) -> None:
    for when in WhenSeveral:
        scope = lot_scope(session, "L2", None, when_several=when)
        assert (scope.model, scope.models) == (None, [])
    a = add_model(session, "a")
    add_test(session, lot["d0"], a, acc=0.9, soft=1, at=1)
    for when in WhenSeveral:
        assert lot_scope(session, "L2", None, when_several=when).model_ref == "a@1"


def test_several_models_most_tested_or_required(session: Session, lot: dict[str, Die]) -> None:
    a, b = add_model(session, "a"), add_model(session, "b", "2")
    add_test(session, lot["d0"], a, acc=0.9, soft=1, at=1)
    add_test(session, lot["d1"], b, acc=0.9, soft=1, at=2)
    add_test(session, lot["d2"], b, acc=0.2, soft=11, at=3)
    scope = lot_scope(session, "L2", None, when_several=WhenSeveral.most_tested)
    assert scope.model_ref == "b@2"
    assert [(m.model, m.n_tested, m.n_passed, m.yield_pct) for m in scope.models] == [
        ("b@2", 2, 1, 50.0),
        ("a@1", 1, 1, 100.0),
    ]
    with pytest.raises(InvalidInputError) as e:
        lot_scope(session, "L2", None, when_several=WhenSeveral.require)
    assert e.value.code == "model_required" and e.value.status_code == 422
    assert e.value.details == {"models": [{"model": "b@2", "n_tested": 2}, {"model": "a@1", "n_tested": 1}]}
    # Named, either way.
    for when in WhenSeveral:
        assert lot_scope(session, "L2", "a@1", when_several=when).model_ref == "a@1"


def test_a_tie_goes_to_the_most_recently_tested_model(session: Session, lot: dict[str, Die]) -> None:
    a, b = add_model(session, "a"), add_model(session, "b")
    add_test(session, lot["d0"], b, acc=0.9, soft=1, at=1)
    add_test(session, lot["d0"], a, acc=0.9, soft=1, at=2)
    assert lot_scope(session, "L2", None, when_several=WhenSeveral.most_tested).model_ref == "a@1"
    add_test(session, lot["d0"], b, acc=0.8, soft=2, at=3)  # b again on the same die: still one die each
    assert lot_scope(session, "L2", None, when_several=WhenSeveral.most_tested).model_ref == "b@1"


def test_unknown_malformed_and_untested_models(session: Session, lot: dict[str, Die]) -> None:
    a = add_model(session, "a")
    add_model(session, "other")
    add_test(session, lot["d0"], a, acc=0.9, soft=1, at=1)
    with pytest.raises(NotFoundError, match="no model a@9"):
        lot_scope(session, "L2", "a@9", when_several=WhenSeveral.most_tested)
    with pytest.raises(NotFoundError, match="no lot"):
        lot_scope(session, "NOPE", "a@1", when_several=WhenSeveral.most_tested)
    for bad in ("a", "a@", "@1", "a@1@2", "a b@1"):
        with pytest.raises(InvalidInputError) as e:
            parse_model_ref(bad)
        assert e.value.code == "invalid_model_ref"
    # A stored model never tested on the lot is a valid filter that finds nothing tested.
    scope = lot_scope(session, "L2", "other@1", when_several=WhenSeveral.require)
    assert scope.model_ref == "other@1" and [m.model for m in scope.models] == ["a@1"]

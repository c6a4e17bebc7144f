"""Which test result decides a die's row with a model: the latest calibrated test with that model, else its
latest uncompensated one; "before" is the latest uncompensated test with that same model."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.db.tables import Die
from app.services.reporting.rows import die_rows
from app.services.reporting.scope import find_model
from tests.services.reporting.conftest import add_image, add_model, add_test


def test_each_model_has_its_own_final_result_and_before(session: Session, lot: dict[str, Die]) -> None:
    a, b = add_model(session, "a"), add_model(session, "b")
    d0, d1, d2 = lot["d0"], lot["d1"], lot["d2"]
    img_a = add_image(session, d0, a)
    # d0: baseline with both models, then two calibrated runs of a; a later *baseline* must not win for a.
    add_test(session, d0, b, acc=0.10, soft=11, at=1)
    add_test(session, d0, a, acc=0.30, soft=11, at=2)
    add_test(session, d0, a, acc=0.60, soft=11, at=3, image=img_a)
    add_test(session, d0, a, acc=0.85, soft=1, at=4, image=img_a)
    add_test(session, d0, a, acc=0.35, soft=12, at=5)
    add_test(session, d0, b, acc=0.20, soft=13, at=6)
    # d1: only an uncompensated test with a: its bins count for a, it has no "after"; untested with b.
    add_test(session, d1, a, acc=0.40, soft=11, at=1)
    # d2: characterized only.
    add_image(session, d2, a)

    rows_a = {r.ecid: r for r in die_rows(session, "L2", find_model(session, "a@1"))}
    rows_b = {r.ecid: r for r in die_rows(session, "L2", find_model(session, "b@1"))}
    r0, r1, r2, r3 = (rows_a[lot[k].ecid] for k in ("d0", "d1", "d2", "d3"))
    assert (r0.soft_bin, r0.passed, r0.accuracy_after, r0.accuracy_before) == (1, True, 0.85, 0.35)
    assert (r1.soft_bin, r1.passed, r1.accuracy_after, r1.accuracy_before) == (11, False, None, 0.40)
    assert (r2.soft_bin, r2.signature_version, r2.n_stuck_cells) == (None, 1, 2)
    assert (r3.soft_bin, r3.signature_version) == (None, None)
    assert {r.model for r in rows_a.values()} == {"a@1"}

    b0, b1 = rows_b[d0.ecid], rows_b[d1.ecid]
    assert (b0.soft_bin, b0.hard_bin, b0.accuracy_before, b0.accuracy_after) == (13, 2, 0.20, None)
    assert (b1.soft_bin, b1.tested_at) == (None, None)
    # The signature is the die's, whatever the model.
    assert (b0.signature_version, b0.offset_spread_mac) == (r0.signature_version, r0.offset_spread_mac)
    assert {r.model for r in rows_b.values()} == {"b@1"}


def test_without_a_model_no_die_is_tested(session: Session, lot: dict[str, Die]) -> None:
    a = add_model(session, "a")
    add_test(session, lot["d0"], a, acc=0.9, soft=1, at=1)
    rows = die_rows(session, "L2", None)
    assert len(rows) == 4 and all(r.soft_bin is None and r.model is None for r in rows)

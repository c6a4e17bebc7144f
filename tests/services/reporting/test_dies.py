"""The die view: its final result per model (default: of its models, the lot's most-tested), every test
and image of every model, and the one function that decodes signatures."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from app.db.tables import Die
from app.services.reporting.dies import decode_signature, die_report
from tests.services.reporting.conftest import add_image, add_model, add_test


def test_die_report_per_model(session: Session, lot: dict[str, Die]) -> None:
    a, b = add_model(session, "a"), add_model(session, "b")
    d0, d1, d2 = lot["d0"], lot["d1"], lot["d2"]
    image = add_image(session, d0, a)
    add_image(session, d0, b)
    add_test(session, d0, a, acc=0.9, soft=1, at=1, image=image)
    add_test(session, d1, a, acc=0.9, soft=1, at=2)
    add_test(session, d0, b, acc=0.3, soft=13, at=3)
    add_test(session, d2, b, acc=0.3, soft=13, at=4)
    add_test(session, d2, b, acc=0.3, soft=14, at=5)
    # Two dies each; b was tested last, so b is the lot's most-tested model.
    r = die_report(session, d0.ecid)
    assert (r.model, r.models, r.final.soft_bin, r.final.model) == ("b@1", ["b@1", "a@1"], 13, "b@1")
    assert len(r.tests) == 2 and len(r.images) == 2
    r = die_report(session, d0.ecid, model="a@1")
    assert (r.model, r.final.soft_bin, r.final.accuracy_after) == ("a@1", 1, 0.9)
    # d1 was only tested with a: that is its default, though the lot's most-tested model is b.
    r = die_report(session, d1.ecid)
    assert (r.model, r.models, r.final.soft_bin) == ("a@1", ["a@1"], 1)
    r = die_report(session, d1.ecid, model="b@1")
    assert (r.model, r.final.soft_bin) == ("b@1", None)
    r = die_report(session, lot["d3"].ecid)  # never tested: the lot's default
    assert (r.model, r.models, r.final.soft_bin) == ("b@1", [], None)


def test_decode_signature() -> None:
    bad = decode_signature(b"not a signature")
    assert bad.error and not bad.gain
    cal = pytest.importorskip("app.calibration.signature")
    np = pytest.importorskip("numpy")
    from hardware.chip import ChipGeometry

    g = ChipGeometry(n_macros=2, rows=8, cols=4, spare_cols=1)
    dead = np.zeros((2, 5), bool)
    dead[1, 2] = True
    sig = cal.Signature(
        geometry=g,
        gain=np.full((2, 5), 1.0),
        offset_mac=np.arange(10, dtype=float).reshape(2, 5) / 4,
        noise_sigma_mac=np.ones(2),
        cell_sigma=0.05,
        cell_residual_sigma=0.05,
        dead_cols=dead,
        dead_code=np.zeros((2, 5), np.int16),
        stuck=cal.StuckCells(
            np.array([0, 0]), np.array([1, 2]), np.array([3, 3]), np.array([1, -1]), np.ones(2)
        ),
    )
    d = decode_signature(sig.to_bytes())
    assert d.error is None
    assert (d.n_macros, d.data_cols, d.spare_cols) == (2, 4, 1)
    assert d.offset_mac[1][4] == 2.25 and d.gain[0][0] == 1.0
    assert d.dead_cols[1] == [0, 0, 1, 0, 0]
    assert d.stuck_cells[0] == [0, 0, 0, 2, 0]
    assert d.summary["n_dead_cols"] == 1

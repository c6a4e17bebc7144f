"""Re-compensating a characterized lot for a model from its stored signatures: the images are the
ones the per-die path computes, each stored once, and a rerun computes nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.calibration.pipeline import ModelContext, Signature, compensate
from app.cli import main
from app.db.repositories import models
from app.db.session import session_scope
from app.db.tables import AuditEvent, Image
from app.db.tables import Signature as SignatureRow
from app.errors import InvalidInputError, NotFoundError
from app.services.images import ImageStore
from app.services.recompensate import LotCompensation, recompensate_lot
from app.services.runtime import runtime_for
from tests.api.helpers import register
from tests.api.models_util import tiny_kws_model
from tests.conftest import SHARED_CACHE_DIR

Headers = Callable[[str], dict[str, str]]
SITES = [[0, 0], [1, 0], [0, 1], [1, 1], [2, 0]]
CHARACTERIZED = ["LOTR-W01-X+000Y+000", "LOTR-W01-X+001Y+000", "LOTR-W01-X+000Y+001", "LOTR-W01-X+002Y+000"]


@pytest.fixture
def characterized_lot(client: TestClient, as_role: Headers) -> str:
    """Lot LOTR: 5 dies, 4 of them characterized; the tiny KWS model stored as tiny@1."""
    register(client, as_role("engineer"), lot_id="LOTR", sites=SITES)
    r = client.post(
        "/v1/models",
        files={"file": ("tiny.npz", tiny_kws_model(), "application/octet-stream")},
        data={"name": "tiny", "version": "1"},
        headers=as_role("engineer"),
    )
    assert r.status_code == 201, r.text
    for ecid in CHARACTERIZED:
        r = client.post(f"/v1/dies/{ecid}/characterize", json={"budget": 8192}, headers=as_role("station"))
        assert r.status_code == 201, r.text
    return "LOTR"


def _run(app: FastAPI, factory: sessionmaker[Session], workers: int = 1) -> LotCompensation:
    return recompensate_lot(
        factory, app.state.runtimes, app.state.image_store, "LOTR", "tiny@1", batch_dies=1, workers=workers
    )


def test_lot_images_equal_the_per_die_images(
    app: FastAPI, characterized_lot: str, session_factory: sessionmaker[Session]
) -> None:
    out = recompensate_lot(
        session_factory, app.state.runtimes, app.state.image_store, characterized_lot, "tiny@1", batch_dies=3
    )
    assert (out.dies, out.computed, out.already, out.not_characterized) == (5, 4, 0, 1)
    store: ImageStore = app.state.image_store
    with session_scope(session_factory) as s:
        rows = {row.signature_id: row for row in s.scalars(select(Image))}
        assert sorted(r.ecid for r in rows.values()) == sorted(CHARACTERIZED)
        model = models.get(s, "tiny", "1", with_blob=True)
        assert model is not None
        runtime = runtime_for(s, app.state.runtimes, model)
        ctx = ModelContext(runtime.program, runtime.stats)
        for sig_row in s.scalars(select(SignatureRow)):
            row = rows[sig_row.id]
            ecid = row.ecid
            alone = compensate(ctx, Signature.from_bytes(sig_row.blob), ecid, sig_row.sha256)
            assert store.get(row.content_sha256) == alone.image_bytes  # byte for byte
            assert row.signature_sha256 == sig_row.sha256 and row.calibratable == alone.calibratable
            assert row.predicted_agreement == pytest.approx(alone.predicted_agreement, abs=1e-9)
        audits = s.scalars(select(AuditEvent).where(AuditEvent.action == "image.compute_lot")).all()
        # One audit row per batch; batches run in worker processes and end in either order.
        assert sorted(a.details["dies"] for a in audits) == [1, 3]


def test_rerun_computes_nothing_and_the_chip_api_serves_the_lot_images(
    app: FastAPI,
    client: TestClient,
    as_role: Headers,
    characterized_lot: str,
    session_factory: sessionmaker[Session],
) -> None:
    first = _run(app, session_factory, workers=2)  # two processes, one die per batch
    assert (first.computed, first.uncalibratable) == (4, 0)
    again = _run(app, session_factory)
    assert (again.computed, again.already, again.not_characterized) == (0, 4, 1)
    with session_scope(session_factory) as s:
        stored = {row.ecid: row.content_sha256 for row in s.scalars(select(Image))}
        audits = s.scalars(select(AuditEvent).where(AuditEvent.action == "image.compute_lot")).all()
    # Two worker processes: the batches end (and are audited) in either order.
    assert len(stored) == 4 and sorted(a.details["first"] for a in audits) == sorted(CHARACTERIZED)
    ecid = CHARACTERIZED[0]
    r = client.get(f"/v1/chips/{ecid}/image", params={"model": "tiny@1"}, headers=as_role("station"))
    assert r.status_code == 200, r.text
    assert app.state.image_store.get(stored[ecid]) == r.content


def test_errors(app: FastAPI, characterized_lot: str, session_factory: sessionmaker[Session]) -> None:
    runtimes, store = app.state.runtimes, app.state.image_store
    with pytest.raises(NotFoundError):
        recompensate_lot(session_factory, runtimes, store, "NOLOT", "tiny@1")
    with pytest.raises(NotFoundError):
        recompensate_lot(session_factory, runtimes, store, characterized_lot, "tiny@9")
    with pytest.raises(InvalidInputError):
        recompensate_lot(session_factory, runtimes, store, characterized_lot, "tiny")
    with pytest.raises(InvalidInputError):
        recompensate_lot(session_factory, runtimes, store, characterized_lot, "tiny@1", batch_dies=0)
    with session_scope(session_factory) as s:
        assert s.scalars(select(Image)).all() == []  # nothing written by a refused run


def test_cli_recompensates_a_lot(
    characterized_lot: str,
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = session_factory.kw["bind"].url.render_as_string(hide_password=False)
    monkeypatch.setenv("CIMCAL_DATABASE_URL", url)
    monkeypatch.setenv("CIMCAL_IMAGE_STORE_DIR", str(tmp_path / "images"))
    monkeypatch.setenv("CIMCAL_AUTO_MIGRATE", "0")
    monkeypatch.setenv("CIMCAL_CACHE_DIR", str(SHARED_CACHE_DIR))
    from app.config import get_settings

    get_settings.cache_clear()
    try:
        assert main(["lots", "recompensate", characterized_lot, "--model", "tiny@1", "--batch", "2"]) == 0
    finally:
        get_settings.cache_clear()
    assert "4 image(s) computed, 0 already there, 1 die(s) not characterized" in capsys.readouterr().out
    with session_scope(session_factory) as s:
        assert len(s.scalars(select(Image)).all()) == 4
    assert len(list((tmp_path / "images").rglob("*.cimg"))) == 4

"""Every malformed field of the model and dataset manifests is a 422 over HTTP, and nothing is stored."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.session import session_scope
from app.db.tables import Dataset, Model
from app.nn.dataset import dataset_bytes
from tests.api.helpers import assert_error
from tests.nn.manifests import rewrite
from tests.nn.test_dataset import MALFORMED_MANIFEST as MALFORMED_DATASET
from tests.nn.test_dataset import good_dataset
from tests.nn.test_model_format import MALFORMED as MALFORMED_MODEL
from tests.nn.test_model_format import good_log_mel_v2

Headers = Callable[[str], dict[str, str]]
GOOD_MODEL = good_log_mel_v2()


@pytest.mark.parametrize("what", sorted(MALFORMED_MODEL))
def test_malformed_model_manifest_fields_are_422(
    client: TestClient, as_role: Headers, session_factory: sessionmaker[Session], what: str
) -> None:
    bad = rewrite(GOOD_MODEL, MALFORMED_MODEL[what])
    r = client.post(
        "/v1/models",
        files={"file": ("m.npz", bad, "application/octet-stream")},
        data={"name": "bad", "version": "1"},
        headers=as_role("engineer"),
    )
    assert_error(r, 422, "invalid_model")
    with session_scope(session_factory) as s:
        assert s.scalar(select(func.count()).select_from(Model).where(Model.name == "bad")) == 0


@pytest.mark.parametrize("what", sorted(MALFORMED_DATASET))
def test_malformed_dataset_manifest_fields_are_422(
    client: TestClient, as_role: Headers, session_factory: sessionmaker[Session], what: str
) -> None:
    bad = rewrite(dataset_bytes(good_dataset()), MALFORMED_DATASET[what])
    r = client.post(
        "/v1/datasets",
        content=bad,
        headers={**as_role("engineer"), "Content-Type": "application/octet-stream"},
    )
    assert_error(r, 422, "invalid_dataset")
    with session_scope(session_factory) as s:
        assert s.scalar(select(func.count()).select_from(Dataset).where(Dataset.name == "set")) == 0

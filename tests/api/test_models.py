from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.session import session_scope
from app.db.tables import AuditEvent, Model, Role
from app.nn.features import FeatureSpec
from app.nn.kws_data import CLASS_NAMES
from app.nn.model import BinaryNetwork, Layer, model_bytes
from tests.api.helpers import assert_error

Headers = Callable[[Role], dict[str, str]]


def tiny_model(rotate: int = 0, accuracy: float | None = 0.5) -> bytes:
    """A flat linear classifier on the KWS input with the KWS classes, rotated by ``rotate``."""
    c, h, w = FeatureSpec().input_shape
    names = CLASS_NAMES[rotate:] + CLASS_NAMES[:rotate]
    n_classes = len(names)
    net = BinaryNetwork(
        "tiny",
        "1",
        (
            Layer("flatten", "flat"),
            Layer(
                "dense_digital",
                "out",
                weight=np.zeros((n_classes, c * h * w), np.float32),
                bias=np.zeros(n_classes, np.float32),
            ),
        ),
        tuple(names),
        metrics={} if accuracy is None else {"software_test_accuracy": accuracy},
    )
    return model_bytes(net)


def upload(
    client: TestClient, headers: dict[str, str], data: bytes, name: str = "kws-bnn", version: str = "1.0.0"
):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/models",
        files={"file": ("model.npz", data, "application/octet-stream")},
        data={"name": name, "version": version},
        headers=headers,
    )


def test_multipart_upload_then_read_back(
    client: TestClient, as_role: Headers, session_factory: sessionmaker[Session]
) -> None:
    data = tiny_model()
    r = upload(client, as_role(Role.engineer), data)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["name"] == "kws-bnn" and created["version"] == "1.0.0"
    assert created["sha256"] == hashlib.sha256(data).hexdigest() and created["size_bytes"] == len(data)
    assert created["class_names"] == list(CLASS_NAMES) and created["software_accuracy"] == 0.5
    assert created["format_version"] == 2  # the version the file was written in (model_bytes writes 2)
    assert client.get("/v1/models/kws-bnn@1.0.0", headers=as_role(Role.viewer)).json() == created
    with session_scope(session_factory) as s:
        # (The reference model registered at start-up may be stored too.)
        assert s.scalars(select(Model.blob).where(Model.version == "1.0.0")).one() == data
        assert (
            s.scalars(
                select(AuditEvent.target).where(AuditEvent.action == "model.upload", AuditEvent.actor != "startup")
            ).one()
            == "kws-bnn@1.0.0"
        )


def test_raw_bytes_upload_with_name_and_version_in_the_query(client: TestClient, as_role: Headers) -> None:
    data = tiny_model(rotate=4, accuracy=None)
    r = client.post(
        "/v1/models",
        params={"name": "kws-bnn", "version": "2", "software_accuracy": 0.9},
        content=data,
        headers={**as_role(Role.admin), "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["software_accuracy"] == 0.9 and r.json()["class_names"][0] == CLASS_NAMES[4]


def test_model_listing(client: TestClient, as_role: Headers) -> None:
    for version in ("1", "2", "3"):
        assert upload(client, as_role(Role.engineer), tiny_model(), version=version).status_code == 201
    assert upload(client, as_role(Role.engineer), tiny_model(), name="other").status_code == 201
    viewer = as_role(Role.viewer)
    page = client.get("/v1/models", params={"name": "kws-bnn", "limit": 2}, headers=viewer).json()
    assert page["total"] == 3 and [m["version"] for m in page["items"]] == ["3", "2"]
    assert client.get("/v1/models", headers=viewer).json()["total"] == 4


def test_upload_errors(client: TestClient, as_role: Headers, app: FastAPI) -> None:
    engineer = as_role(Role.engineer)
    error = assert_error(upload(client, engineer, b"not a model"), 422, "invalid_model")
    assert "not a valid model file" in error["message"]
    assert_error(upload(client, engineer, tiny_model(), name="bad name"), 422, "validation_error")
    no_file = {"name": "x", "version": "1"}
    r = client.post("/v1/models", data=no_file, files={"other": ("x", b"1")}, headers=engineer)
    assert_error(r, 422, "validation_error")
    raw_without_name = client.post(
        "/v1/models", content=tiny_model(), headers={**engineer, "Content-Type": "application/octet-stream"}
    )
    error = assert_error(raw_without_name, 422, "validation_error")
    assert ["query", "name"] in [d["loc"] for d in error["details"]]
    assert_error(
        client.post("/v1/models", content=b"{}", headers={**engineer, "Content-Type": "application/json"}),
        415,
        "unsupported_media_type",
    )
    assert upload(client, engineer, tiny_model()).status_code == 201
    assert_error(upload(client, engineer, tiny_model()), 409, "model_exists")
    assert_error(client.get("/v1/models/kws-bnn@9", headers=engineer), 404, "not_found")


@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_oversized_models_are_413_and_not_stored(
    client: TestClient, as_role: Headers, app: FastAPI, how: str
) -> None:
    limit = 2048
    app.state.settings = app.state.settings.model_copy(update={"max_model_bytes": limit})
    engineer = as_role(Role.engineer)
    too_big = tiny_model() + b"\0" * limit
    if how == "multipart":
        r = upload(client, engineer, too_big)
    else:
        r = client.post(
            "/v1/models",
            params={"name": "big", "version": "1"},
            content=too_big,
            headers={**engineer, "Content-Type": "application/octet-stream"},
        )
    assert_error(r, 413, "payload_too_large")
    assert client.get("/v1/models", headers=engineer).json()["total"] == 0


def test_an_upload_retried_with_its_idempotency_key_is_stored_once(
    client: TestClient, as_role: Headers
) -> None:
    headers = {**as_role(Role.engineer), "Idempotency-Key": "upload-1"}
    data = tiny_model()
    first, again = upload(client, headers, data), upload(client, headers, data)
    assert (first.status_code, again.status_code) == (201, 201) and first.json() == again.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert_error(upload(client, headers, tiny_model(rotate=5)), 422, "idempotency_key_reused")


def test_a_caller_without_the_role_is_refused_before_the_body_is_read(
    client: TestClient, as_role: Headers, app: FastAPI
) -> None:
    app.state.settings = app.state.settings.model_copy(update={"max_model_bytes": 16})
    big = b"\0" * 1024
    assert_error(upload(client, {}, big), 401, "unauthenticated")
    assert_error(upload(client, as_role(Role.station), big), 403, "forbidden")
    assert_error(upload(client, as_role(Role.engineer), big), 413, "payload_too_large")

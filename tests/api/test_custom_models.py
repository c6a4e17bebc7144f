"""A customer's own model with its own datasets, over HTTP on both databases: datasets uploaded,
the model bound to them (input shape, class names by name, its own pass limits), characterized
once per die, compensated, functional-tested one die at a time and through a batch job."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.calibration.functional import GradeRule, grade
from app.db.session import session_scope
from app.db.tables import Dataset, DatasetBlob, TestResult
from app.nn.dataset import dataset_bytes
from app.nn.features import DEFAULT_SPEC
from app.nn.model import BinaryNetwork, GradeLimit, Layer, PassLimits, model_bytes
from tests.api.helpers import assert_error, register
from tests.nn.manifests import flat_network, image_network, self_labelled

Headers = Callable[[str], dict[str, str]]
ECIDS = ["LOT0001-W01-X+000Y+000", "LOT0001-W01-X+001Y+000"]
LIMITS = PassLimits("absolute", (GradeLimit(1, "GOLD", 0.97), GradeLimit(3, "SILVER", 0.6)))


def _post_dataset(client: TestClient, headers: dict[str, str], data: bytes) -> dict[str, object]:
    r = client.post(
        "/v1/datasets", files={"file": ("d.npz", data, "application/octet-stream")}, headers=headers
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _post_model(client: TestClient, headers: dict[str, str], net: BinaryNetwork, **fields: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/models",
        files={"file": ("m.npz", model_bytes(net), "application/octet-stream")},
        data={"name": net.name, "version": net.version, **fields},
        headers=headers,
    )


@pytest.fixture
def image_model(client: TestClient, as_role: Headers) -> BinaryNetwork:
    """An (1, 8, 8)-input, 5-class model with its own self-labelled datasets (test labels listed in
    another class order than the model's), uploaded over HTTP."""
    net = image_network(pass_limits=LIMITS)
    eng = as_role("engineer")
    order = tuple(reversed(net.class_names))
    _post_dataset(client, eng, dataset_bytes(self_labelled(net, 96, "img-calib@1", "calibration", 1)))
    _post_dataset(
        client, eng, dataset_bytes(self_labelled(net, 64, "img-test@1", "test", 2, class_order=order))
    )
    r = _post_model(client, eng, net)
    assert r.status_code == 201, r.text
    body = r.json()
    assert (
        body["format_version"] == 2 and body["input_shape"] == [1, 8, 8] and body["preprocessing"] == "none"
    )
    assert body["calibration_dataset"] == "img-calib@1" and body["test_dataset"] == "img-test@1"
    assert body["ideal_accuracy"] > 0.9  # the test labels are the network's own predictions
    assert [(g["soft_bin"], g["label"], g["min_accuracy"]) for g in body["grades"]] == [
        (1, "GOLD", 0.97),
        (3, "SILVER", 0.6),
    ]
    return net


def _functional_test(client: TestClient, as_role: Headers, ecid: str, model: str) -> dict[str, object]:
    r = client.post(f"/v1/dies/{ecid}/functional-test", json={"model": model}, headers=as_role("station"))
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_a_customer_model_is_characterized_compensated_and_graded_against_its_own_limits(
    client: TestClient, as_role: Headers, image_model: BinaryNetwork, session_factory: sessionmaker[Session]
) -> None:
    register(client, as_role("engineer"))
    r = client.post(f"/v1/dies/{ECIDS[0]}/characterize", json={"budget": 8192}, headers=as_role("station"))
    assert r.status_code == 201, r.text
    image = client.get(f"/v1/chips/{ECIDS[0]}/image", params={"model": "img@1"}, headers=as_role("station"))
    assert image.status_code == 200, image.text
    out = _functional_test(client, as_role, ECIDS[0], "img@1")
    assert out["n_clips"] == 24  # functional_test_clips of the test settings, from img-test@1's 64
    rules = (GradeRule(1, 1, "GOLD", 0.97), GradeRule(3, 1, "SILVER", 0.6))
    expected = grade(float(out["accuracy"]), pass_grades=rules)  # type: ignore[arg-type]
    assert (out["soft_bin"], out["bin_label"]) == (expected.soft_bin, expected.label)
    assert out["bin_label"] in ("GOLD", "SILVER", "FAIL_ACCURACY")
    assert float(out["accuracy"]) >= 0.6  # type: ignore[arg-type]  # calibrated die vs labels it defined itself
    with session_scope(session_factory) as s:
        rows = s.scalars(select(TestResult)).all()
        assert len(rows) == 2  # before (no image) and after calibration


def test_the_model_with_its_classes_reordered_is_graded_like_the_original(
    client: TestClient, as_role: Headers, image_model: BinaryNetwork
) -> None:
    register(client, as_role("engineer"))
    r = client.post(f"/v1/dies/{ECIDS[0]}/characterize", json={"budget": 8192}, headers=as_role("station"))
    assert r.status_code == 201, r.text
    perm = np.array([3, 0, 4, 1, 2])
    head = image_model.layers[-1]
    assert head.weight is not None and head.bias is not None
    reordered = replace(
        image_model,
        version="reordered",
        class_names=tuple(image_model.class_names[i] for i in perm),
        layers=(*image_model.layers[:-1], replace(head, weight=head.weight[perm], bias=head.bias[perm])),
    )
    r = _post_model(client, as_role("engineer"), reordered)
    assert r.status_code == 201, r.text
    original = _functional_test(client, as_role, ECIDS[0], "img@1")
    again = _functional_test(client, as_role, ECIDS[0], "img@reordered")
    # the same computation with its logits permuted and named: only read noise may differ
    assert abs(float(again["accuracy"]) - float(original["accuracy"])) <= 0.1  # type: ignore[arg-type]
    assert float(again["accuracy"]) >= 0.6  # type: ignore[arg-type]


def test_a_model_whose_classes_do_not_match_its_test_set_is_refused(
    client: TestClient, as_role: Headers, image_model: BinaryNetwork
) -> None:
    eng = as_role("engineer")
    six = image_network(n_classes=6, pass_limits=LIMITS)
    error = assert_error(_post_model(client, eng, replace(six, version="six")), 422, "class_mismatch")
    assert error["details"]["missing_in_dataset"] == ["k5"]
    # a 10-class model on the KWS input, format 1 (no datasets of its own): the station's KWS sets
    # are its default, and their 12 classes are not its 10
    c, h, w = DEFAULT_SPEC.input_shape
    ten = BinaryNetwork(
        "ten",
        "1",
        (
            Layer("flatten", "f"),
            Layer(
                "dense_digital",
                "o",
                weight=np.zeros((10, c * h * w), np.float32),
                bias=np.zeros(10, np.float32),
            ),
        ),
        tuple(str(i) for i in range(10)),
    )
    error = assert_error(_post_model(client, eng, ten), 422, "class_mismatch")
    assert "kws-test" in error["message"] or "kws-calib" in error["message"]
    # other mismatches: input shape, front end, unknown dataset, no datasets at all
    flat = flat_network()
    assert_error(
        _post_model(client, eng, flat, calibration_dataset="img-calib@1", test_dataset="img-test@1"),
        422,
        "dataset_shape_mismatch",
    )
    assert_error(_post_model(client, eng, flat), 422, "unknown_dataset")
    assert_error(_post_model(client, eng, replace(flat, datasets=None)), 422, "datasets_required")
    assert client.get("/v1/models/ten@1", headers=eng).status_code == 404


def test_a_batch_job_calibrates_a_lot_for_the_customer_model(
    client: TestClient,
    as_role: Headers,
    app: FastAPI,
    image_model: BinaryNetwork,
    session_factory: sessionmaker[Session],
) -> None:
    register(client, as_role("engineer"), sites=[[0, 0], [1, 0]])
    body = {"model": "img@1", "steps": ["characterize", "compensate", "functional-test"]}
    r = client.post("/v1/lots/LOT0001/calibrate", json=body, headers=as_role("engineer"))
    assert r.status_code == 202, r.text
    assert app.state.job_runner.wait_idle(timeout_s=300)
    job = client.get(f"/v1/jobs/{r.json()['id']}", headers=as_role("viewer")).json()
    assert job["state"] == "succeeded", job
    with session_scope(session_factory) as s:
        calibrated = s.scalars(select(TestResult).where(TestResult.image_id.is_not(None))).all()
        assert len(calibrated) == 2
        rules = (GradeRule(1, 1, "GOLD", 0.97), GradeRule(3, 1, "SILVER", 0.6))
        for row in calibrated:
            assert row.soft_bin == grade(row.accuracy, pass_grades=rules).soft_bin


def test_datasets_are_content_addressed_listed_and_read_back(
    client: TestClient, as_role: Headers, session_factory: sessionmaker[Session]
) -> None:
    net = image_network()
    eng = as_role("engineer")
    ds = self_labelled(net, 16, "copy-a@1", "test", 3)
    a = _post_dataset(client, eng, dataset_bytes(ds))
    b = _post_dataset(client, eng, dataset_bytes(replace(ds, name="copy-b")))
    assert (
        a["n_samples"] == 16 and a["input_shape"] == [1, 8, 8] and a["class_names"] == list(net.class_names)
    )
    assert a["features"] == "raw" and a["provenance"] == {"source": "tests: self-labelled", "seed": 3}
    same = _post_dataset(client, eng, dataset_bytes(replace(ds, name="copy-c", version="2")))
    assert client.get("/v1/datasets/copy-a@1", headers=as_role("viewer")).json() == a
    listed = client.get("/v1/datasets", params={"role": "test"}, headers=as_role("viewer")).json()
    assert {d["name"] for d in listed["items"]} >= {"copy-a", "copy-b", "copy-c"}
    assert b["sha256"] != a["sha256"] and same["sha256"] != a["sha256"]  # the manifest names it
    with session_scope(session_factory) as s:
        assert (
            s.scalar(select(DatasetBlob.size_bytes).where(DatasetBlob.sha256 == a["sha256"]))
            == a["size_bytes"]
        )
        assert len(s.scalars(select(Dataset).where(Dataset.name.like("copy-%"))).all()) == 3
    assert_error(_post_dataset_raw(client, eng, dataset_bytes(ds)), 409, "dataset_exists")
    assert_error(_post_dataset_raw(client, eng, b"not a dataset"), 422, "invalid_dataset")
    assert_error(_post_dataset_raw(client, as_role("station"), dataset_bytes(ds)), 403, "forbidden")
    assert_error(client.get("/v1/datasets/nope@1", headers=eng), 404, "dataset_not_found")


def _post_dataset_raw(client: TestClient, headers: dict[str, str], data: bytes):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/datasets", content=data, headers={**headers, "Content-Type": "application/octet-stream"}
    )

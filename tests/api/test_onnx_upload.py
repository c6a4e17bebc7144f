"""An ONNX file exported by torch.onnx.export, uploaded over HTTP: converted to the same model file
as the PyTorch exporter gives, bound to its datasets; unsupported operators are a 422 naming them."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from torch import nn

from app.db.session import session_scope
from app.db.tables import Model
from app.nn.dataset import dataset_bytes
from app.nn.model import GradeLimit, PassLimits, Preprocessing, model_bytes
from app.nn.torch_export import BinaryConv2d, GlobalAvgPool2d, Step, export_torch, onnx_bytes
from tests.api.helpers import assert_error
from tests.nn.manifests import self_labelled

Headers = Callable[[str], dict[str, str]]
CLASSES = ["k0", "k1", "k2", "k3", "k4"]
LIMITS = PassLimits("relative", (GradeLimit(1, "GOLD", 0.95), GradeLimit(2, "SILVER", 0.8)))


def _module(head: nn.Module | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        Step(),
        BinaryConv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        Step(),
        GlobalAvgPool2d(),
        nn.Linear(16, 5),
    ]
    if head is not None:
        layers.append(head)
    return nn.Sequential(*layers).eval()


def _post(client: TestClient, headers: dict[str, str], data: bytes, **fields: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/models",
        files={"file": ("net.onnx", data, "application/onnx")},
        data={"name": "onnx-net", "version": "1", **fields},
        headers=headers,
    )


@pytest.fixture
def datasets(client: TestClient, as_role: Headers) -> None:
    net = export_torch(_module(), name="x", version="1", class_names=CLASSES, input_shape=(1, 8, 8))
    for ref, role, seed in (("onnx-calib@1", "calibration", 1), ("onnx-test@1", "test", 2)):
        data = dataset_bytes(self_labelled(net, 48, ref, role, seed))
        r = client.post(
            "/v1/datasets",
            files={"file": ("d.npz", data, "application/octet-stream")},
            headers=as_role("engineer"),
        )
        assert r.status_code == 201, r.text


def test_an_onnx_upload_stores_the_exporters_model_file(
    client: TestClient, as_role: Headers, datasets: None, session_factory: sessionmaker[Session]
) -> None:
    module = _module()
    r = _post(
        client,
        as_role("engineer"),
        onnx_bytes(module, (1, 8, 8)),
        class_names=json.dumps(CLASSES),
        preprocessing=json.dumps({"kind": "none"}),
        pass_limits=json.dumps(LIMITS.as_dict()),
        calibration_dataset="onnx-calib@1",
        test_dataset="onnx-test@1",
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["input_shape"] == [1, 8, 8] and body["class_names"] == CLASSES
    assert body["pass_limits"]["mode"] == "relative" and body["ideal_accuracy"] > 0.9
    expected = model_bytes(
        export_torch(
            module,
            name="onnx-net",
            version="1",
            class_names=CLASSES,
            input_shape=(1, 8, 8),
            preprocessing=Preprocessing("none"),
            pass_limits=LIMITS,
        )
    )
    with session_scope(session_factory) as s:
        assert s.scalar(select(Model.blob).where(Model.name == "onnx-net")) == expected


def test_unsupported_operators_and_bad_onnx_are_422(
    client: TestClient, as_role: Headers, datasets: None
) -> None:
    eng = as_role("engineer")
    fields = {
        "class_names": json.dumps(CLASSES),
        "calibration_dataset": "onnx-calib@1",
        "test_dataset": "onnx-test@1",
    }
    error = assert_error(
        _post(client, eng, onnx_bytes(_module(nn.Sigmoid()), (1, 8, 8)), **fields),
        422,
        "unsupported_operator",
    )
    assert error["details"]["op_type"] == "Sigmoid" and error["details"]["node"]
    assert "Sigmoid" in error["message"]
    assert_error(_post(client, eng, b"not onnx", **fields), 422, "invalid_model")
    assert_error(
        _post(client, eng, onnx_bytes(_module(), (1, 8, 8))), 422, "validation_error"
    )  # no class names
    bad_json = {**fields, "class_names": "k0,k1"}
    assert_error(_post(client, eng, onnx_bytes(_module(), (1, 8, 8)), **bad_json), 422, "validation_error")

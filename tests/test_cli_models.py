"""`cimcal models import`: an ONNX file -> a model file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from app.cli import main
from app.nn.model import load_model, model_bytes
from app.nn.torch_export import export_torch, onnx_bytes
from tests.nn.torch_nets import flat_net, image_net


def test_models_import_writes_the_exporters_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = image_net()
    src = tmp_path / "tiny.onnx"
    src.write_bytes(onnx_bytes(net.module, net.input_shape))
    out = tmp_path / "tiny.npz"
    argv = ["models", "import", str(src), "--name", "tiny", "--version", "1", "--class-names", "a,b,c"]
    assert main([*argv, "--input-shape", "1,8,8", "--out", str(out)]) == 0
    assert "bconv1 conv_binary" in capsys.readouterr().out
    meta = {**net.meta(), "metrics": {}}
    assert out.read_bytes() == model_bytes(export_torch(net.module, input_shape=net.input_shape, **meta))
    assert load_model(out).class_names == ("a", "b", "c")


def test_models_import_takes_preprocessing_datasets_and_pass_limits(tmp_path: Path) -> None:
    net = flat_net()
    src = tmp_path / "flat.onnx"
    src.write_bytes(onnx_bytes(net.module, net.input_shape))
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(net.class_names) + "\n")
    assert net.pass_limits is not None and net.datasets is not None
    out = tmp_path / "flat.npz"
    status = main(
        [
            "models",
            "import",
            str(src),
            "--name",
            "tiny",
            "--version",
            "1",
            "--classes-file",
            str(classes),
            "--preprocessing",
            "binarize:0.5",
            "--calibration-dataset",
            net.datasets.calibration,
            "--test-dataset",
            net.datasets.test,
            "--pass-limits",
            json.dumps(net.pass_limits.as_dict()),
            "--out",
            str(out),
        ]
    )
    assert status == 0
    meta = {**net.meta(), "metrics": {}}
    assert out.read_bytes() == model_bytes(export_torch(net.module, input_shape=net.input_shape, **meta))


def test_models_import_reports_an_unsupported_operator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "sigmoid.onnx"
    src.write_bytes(onnx_bytes(nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.Sigmoid()).eval(), (4,)))
    out = tmp_path / "never.npz"
    argv = ["models", "import", str(src), "--name", "m", "--version", "1", "--class-names", "a,b"]
    assert main([*argv, "--out", str(out)]) == 1
    assert "Sigmoid node '/2/Sigmoid'" in capsys.readouterr().err
    assert not out.exists()

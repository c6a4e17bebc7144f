"""network_from_onnx: the ONNX file of a supported torch network -> the same model bytes as
export_torch; unsupported operators and malformed files are refused."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from app.nn.model import forward_software, model_bytes
from app.nn.network import ModelFormatError, Preprocessing
from app.nn.onnx_import import MAX_ONNX_BYTES, UnsupportedOperatorError, network_from_onnx
from app.nn.torch_export import BinaryConv2d, Step, export_torch, onnx_bytes
from tests.nn.torch_nets import all_nets, image_net

NETS = all_nets()


def _torchscript_export(
    module: nn.Module, input_shape: tuple[int, ...], path: Path, **kwargs: object
) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based ONNX export"
        torch.onnx.export(module, (torch.zeros(1, *input_shape),), path, dynamo=False, **kwargs)  # type: ignore[arg-type]
    return path.read_bytes()


@pytest.mark.parametrize("key", list(NETS))
def test_onnx_import_gives_the_same_bytes_as_export_torch(key: str) -> None:
    net = NETS[key]
    direct = model_bytes(export_torch(net.module, input_shape=net.input_shape, **net.meta()))
    imported = network_from_onnx(onnx_bytes(net.module, net.input_shape), **net.meta())
    assert imported.input_shape == net.input_shape  # read from the graph's input
    assert tuple(layer.kind for layer in imported.layers) == net.kinds
    assert model_bytes(imported) == direct


def test_plain_torch_onnx_export_without_constant_folding_gives_the_same_bytes(tmp_path: Path) -> None:
    net = image_net()
    data = _torchscript_export(net.module, net.input_shape, tmp_path / "m.onnx", do_constant_folding=False)
    direct = model_bytes(export_torch(net.module, input_shape=net.input_shape, **net.meta()))
    assert model_bytes(network_from_onnx(data, **net.meta())) == direct


@pytest.mark.parametrize("key", ["image", "gap"])
def test_default_torch_onnx_export_imports_and_agrees_with_torch(key: str, tmp_path: Path) -> None:
    """The exporter's defaults fold each Conv2d + BatchNorm2d in float32 itself: not bit for bit
    export_torch's folding, but the same network."""
    net = NETS[key]
    data = _torchscript_export(net.module, net.input_shape, tmp_path / "m.onnx")
    imported = network_from_onnx(data, **net.meta())
    assert tuple(layer.kind for layer in imported.layers) == net.kinds
    x = net.inputs(512)
    with torch.no_grad():
        torch_logits = net.module(torch.from_numpy(x)).numpy()
    logits = forward_software(imported, x)
    assert np.mean(logits.argmax(1) == torch_logits.argmax(1)) >= 0.99
    assert np.median(np.abs(logits - torch_logits)) < 1e-5


def test_dynamo_exporter_without_its_optimizer_gives_the_same_bytes(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")  # the torch.export-based exporter needs it; not a dependency
    net = image_net()
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        net.module,
        (torch.zeros(2, *net.input_shape),),
        path,
        dynamo=True,
        optimize=False,
        external_data=False,
    )
    direct = model_bytes(export_torch(net.module, input_shape=net.input_shape, **net.meta()))
    assert model_bytes(network_from_onnx(path.read_bytes(), **net.meta())) == direct


@pytest.mark.parametrize(
    ("last", "op_type", "node"),
    [
        ([nn.Linear(16, 4), nn.Sigmoid(), nn.Linear(4, 3)], "Sigmoid", "/2/Sigmoid"),
        ([nn.Linear(16, 3), nn.Softmax(dim=1)], "Softmax", "/2/Softmax"),
    ],
)
def test_unsupported_operator_names_its_op_type_and_node(
    last: list[nn.Module], op_type: str, node: str
) -> None:
    module = nn.Sequential(nn.Flatten(), *last).eval()
    with pytest.raises(UnsupportedOperatorError) as e:
        network_from_onnx(onnx_bytes(module, (1, 4, 4)), name="m", version="1", class_names=["a", "b", "c"])
    assert (e.value.op_type, e.value.node) == (op_type, node)
    assert op_type in str(e.value) and node in str(e.value)
    assert isinstance(e.value, ModelFormatError)


def test_supported_operator_outside_the_patterns_names_the_node() -> None:
    # a binary convolution without its step
    module = nn.Sequential(BinaryConv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2)).eval()
    with pytest.raises(UnsupportedOperatorError, match="step") as e:
        network_from_onnx(
            onnx_bytes(module, (1, 4, 4)),
            name="m",
            version="1",
            class_names=["a", "b"],
            preprocessing=Preprocessing("binarize", threshold=0.5),
        )
    assert e.value.op_type == "Conv" and e.value.node == "/0/Conv"


@pytest.mark.parametrize(
    "data",
    [b"", b"this is not an onnx model", b"\x08\x07\x12\x04junk", bytes(range(256)) * 4],
    ids=["empty", "text", "header-only", "binary"],
)
def test_bytes_that_are_not_onnx_are_a_model_format_error(data: bytes) -> None:
    with pytest.raises(ModelFormatError) as e:
        network_from_onnx(data, name="m", version="1", class_names=["a", "b"])
    assert not isinstance(e.value, UnsupportedOperatorError)


def test_a_model_file_or_a_truncated_onnx_file_is_refused() -> None:
    net = image_net()
    npz = model_bytes(export_torch(net.module, input_shape=net.input_shape, **net.meta()))
    data = onnx_bytes(net.module, net.input_shape)
    for bad in (npz, data[: len(data) // 2]):
        with pytest.raises(ModelFormatError):
            network_from_onnx(bad, **net.meta())


def test_input_over_the_size_limit_is_refused_before_parsing() -> None:
    with pytest.raises(ModelFormatError, match="limit"):
        network_from_onnx(b"\x00" * (MAX_ONNX_BYTES + 1), name="m", version="1", class_names=["a", "b"])


def test_input_shape_must_match_the_graph() -> None:
    net = image_net()
    data = onnx_bytes(net.module, net.input_shape)
    assert network_from_onnx(data, input_shape=(1, 8, 8), **net.meta()).input_shape == (1, 8, 8)
    with pytest.raises(ModelFormatError, match="does not match"):
        network_from_onnx(data, input_shape=(1, 8, 9), **net.meta())


# ----------------------------------------------------------------------- hand-written graphs
def _model(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], in_shape: list[object], n_out: int
) -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _f32(name: str, a: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)


def test_sign_node_matmul_add_and_reshape_match_the_torch_network() -> None:
    """Sign of an initializer as binary weights, BatchNormalization, the step, Reshape [0, -1] and
    MatMul + Add: the same bytes as the torch network they describe."""
    rng = np.random.default_rng(3)
    latent = rng.normal(size=(3, 1, 3, 3)).astype(np.float32)
    gamma, beta = np.array([-0.8, 1.2, 0.5], np.float32), np.array([0.3, -1.0, 0.2], np.float32)
    mean, var = np.array([0.5, -1.0, 2.0], np.float32), np.array([2.0, 1.5, 3.0], np.float32)
    w_in_out = rng.normal(size=(48, 2)).astype(np.float32)  # MatMul's (in, out)
    bias = np.array([0.1, -0.2], np.float32)
    nodes = [
        helper.make_node("Sign", ["latent"], ["w"], name="sign"),
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"], name="bn", epsilon=1e-3),
        helper.make_node("Constant", [], ["zero"], name="zero", value=_f32("z", np.array(0.0))),
        helper.make_node("GreaterOrEqual", ["bn", "zero"], ["ge"], name="ge"),
        helper.make_node("Cast", ["ge"], ["on"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["on", "shape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "wfc"], ["mm"], name="mm"),
        helper.make_node("Add", ["mm", "bfc"], ["y"], name="add"),
    ]
    inits = [
        _f32("latent", latent),
        _f32("g", gamma),
        _f32("b", beta),
        _f32("m", mean),
        _f32("v", var),
        numpy_helper.from_array(np.array([0, -1], np.int64), "shape"),
        _f32("wfc", w_in_out),
        _f32("bfc", bias),
    ]
    meta = {
        "name": "hand",
        "version": "1",
        "class_names": ["a", "b"],
        "preprocessing": Preprocessing("binarize", threshold=0.5),
    }
    imported = network_from_onnx(_model(nodes, inits, ["N", 1, 4, 4], 2), **meta)  # type: ignore[arg-type]

    module = nn.Sequential(
        BinaryConv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3, eps=1e-3), Step(), nn.Flatten()
    )
    module.append(nn.Linear(48, 2))
    with torch.no_grad():
        module[0].weight.copy_(torch.from_numpy(latent))
        for t, v in ((module[1].weight, gamma), (module[1].bias, beta)):
            t.copy_(torch.from_numpy(v))
        module[1].running_mean.copy_(torch.from_numpy(mean))
        module[1].running_var.copy_(torch.from_numpy(var))
        module[4].weight.copy_(torch.from_numpy(w_in_out.T.copy()))
        module[4].bias.copy_(torch.from_numpy(bias))
    direct = export_torch(module.eval(), input_shape=(1, 4, 4), **meta)  # type: ignore[arg-type]
    assert [layer.kind for layer in imported.layers] == ["conv_binary", "flatten", "dense_digital"]
    assert model_bytes(imported) == model_bytes(direct)


def test_external_tensor_data_is_refused() -> None:
    """External data would name a file on the station; it is refused before anything reads it."""
    w = _f32("w", np.ones((2, 4)))
    w.ClearField("float_data")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../../etc/passwd")
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)]
    with pytest.raises(ModelFormatError, match="external data"):
        network_from_onnx(_model(nodes, [w], ["N", 4], 2), name="m", version="1", class_names=["a", "b"])


def test_a_branching_graph_is_refused() -> None:
    nodes = [
        helper.make_node("Flatten", ["x"], ["a"], name="f1"),
        helper.make_node("Flatten", ["x"], ["b"], name="f2"),
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    with pytest.raises(ModelFormatError, match="branches"):
        network_from_onnx(_model(nodes, [], ["N", 2], 2), name="m", version="1", class_names=["a", "b"])


def test_a_custom_domain_operator_is_unsupported() -> None:
    nodes = [helper.make_node("FancyGemm", ["x", "w"], ["y"], name="fancy", domain="com.example")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        initializer=[_f32("w", np.ones((2, 4)))],
    )
    data = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    ).SerializeToString()
    with pytest.raises(UnsupportedOperatorError) as e:
        network_from_onnx(data, name="m", version="1", class_names=["a", "b"])
    assert (e.value.op_type, e.value.node) == ("FancyGemm", "fancy")

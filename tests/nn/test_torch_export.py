"""export_torch: a torch.nn.Sequential of the supported modules -> BinaryNetwork."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from app.nn.folding import sign_pm1
from app.nn.model import forward_software, load_model_bytes, model_bytes
from app.nn.network import ModelFormatError, Preprocessing
from app.nn.torch_export import BinaryConv2d, BinaryLinear, Step, UnsupportedModuleError, export_torch, step
from tests.nn.torch_nets import TinyNet, all_nets, image_net

NETS = all_nets()


def _export(net: TinyNet) -> object:
    return export_torch(net.module, input_shape=net.input_shape, **net.meta())


@pytest.mark.parametrize("key", list(NETS))
def test_exported_network_computes_what_torch_computes_in_eval_mode(key: str) -> None:
    net = NETS[key]
    exported = export_torch(net.module, input_shape=net.input_shape, **net.meta())
    assert tuple(layer.kind for layer in exported.layers) == net.kinds
    x = net.inputs(512)
    with torch.no_grad():
        torch_logits = net.module(torch.from_numpy(x)).numpy()
    logits = forward_software(exported, x)
    # a float32 sum that lands exactly on a step can flip one unit now and then
    assert np.mean(logits.argmax(1) == torch_logits.argmax(1)) >= 0.99
    assert np.median(np.abs(logits - torch_logits)) < 1e-5
    assert np.mean(np.abs(logits - torch_logits).max(axis=1) < 1e-4) >= 0.99


@pytest.mark.parametrize("key", list(NETS))
def test_export_writes_a_valid_model_file_with_the_metadata(key: str) -> None:
    net = NETS[key]
    back = load_model_bytes(model_bytes(export_torch(net.module, input_shape=net.input_shape, **net.meta())))
    assert back.input_shape == net.input_shape and back.class_names == net.class_names
    assert back.prep == net.preprocessing
    assert back.datasets == net.datasets and back.pass_limits == net.pass_limits
    assert back.metrics == {"source": "test"}


def test_negative_gain_negates_the_channel_and_keeps_integer_thresholds() -> None:
    net = image_net()
    exported = export_torch(net.module, input_shape=net.input_shape, **net.meta())
    bconv = exported.layers[1]
    assert bconv.kind == "conv_binary" and bconv.pool == (2, 2) and bconv.padding == (1, 1)
    assert bconv.weight is not None and bconv.threshold is not None
    assert bconv.weight.dtype == np.int8 and bconv.threshold.dtype == np.int32
    latent = net.module[3].weight.detach().numpy()
    gamma = net.module[4].weight.detach().numpy()
    signs = sign_pm1(latent)
    for j in range(len(gamma)):
        expected = -signs[j] if gamma[j] < 0 else signs[j]
        np.testing.assert_array_equal(bconv.weight[j], expected)
    assert gamma[0] < 0


def test_export_does_not_change_the_module() -> None:
    net = image_net()
    module = net.module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    a = model_bytes(export_torch(module, input_shape=net.input_shape, **net.meta()))
    assert module.training  # eval semantics without switching the module
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k])
    assert a == model_bytes(export_torch(module.eval(), input_shape=net.input_shape, **net.meta()))


def test_unsupported_module_is_named_with_its_position() -> None:
    module = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), Step()),
        nn.Sequential(nn.Flatten(), nn.Sigmoid()),
        nn.Linear(72, 2),
    )
    with pytest.raises(UnsupportedModuleError) as e:
        export_torch(module, name="m", version="1", class_names=["a", "b"], input_shape=(1, 8, 8))
    assert e.value.module == "1.1" and e.value.position == 4 and e.value.module_type == "Sigmoid"
    assert "Sigmoid '1.1' (position 4)" in str(e.value)
    assert isinstance(e.value, ModelFormatError)


@pytest.mark.parametrize(
    ("modules", "module_type", "needle"),
    [
        # a binary convolution without its step
        ([BinaryConv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 2)], "BinaryConv2d", "step"),
        # a digital linear layer in the middle
        ([nn.Flatten(), nn.Linear(64, 8), nn.Linear(8, 2)], "Linear", "last layer"),
        # a step on the raw input
        ([Step(), nn.Flatten(), nn.Linear(64, 2)], "Step", "binarize"),
        # a linear layer on an image
        (
            [nn.Conv2d(1, 2, 3), Step(), BinaryLinear(6, 2), Step(), nn.Linear(2, 2)],
            "BinaryLinear",
            "Flatten",
        ),
        # pooling with overlapping windows
        (
            [nn.Conv2d(1, 2, 3), Step(), nn.MaxPool2d(3, stride=1), nn.Flatten(), nn.Linear(32, 2)],
            "MaxPool2d",
            "stride",
        ),
        # softmax on the logits
        ([nn.Flatten(), nn.Linear(64, 2), nn.Softmax(dim=1)], "Softmax", "no cimcal layer"),
    ],
)
def test_unsupported_patterns_raise_a_clear_error(
    modules: list[nn.Module], module_type: str, needle: str
) -> None:
    module = nn.Sequential(*modules).eval()
    with pytest.raises(UnsupportedModuleError, match=needle) as e:
        export_torch(module, name="m", version="1", class_names=["a", "b"], input_shape=(1, 8, 8))
    assert e.value.module_type == module_type


def test_binary_layer_on_real_inputs_is_a_digital_layer() -> None:
    """Without 'binarize', a first BinaryLinear sees real values: it runs as a digital layer (the
    same function), which cannot be followed by a step."""
    module = nn.Sequential(BinaryLinear(16, 4), nn.BatchNorm1d(4), Step(), nn.Linear(4, 2)).eval()
    meta = {"name": "m", "version": "1", "class_names": ["a", "b"], "input_shape": (16,)}
    with pytest.raises(UnsupportedModuleError, match="must be binary"):
        export_torch(module, **meta)  # type: ignore[arg-type]
    net = export_torch(module, preprocessing=Preprocessing("binarize", threshold=0.0), **meta)  # type: ignore[arg-type]
    assert [layer.kind for layer in net.layers] == ["dense_binary", "dense_digital"]


def test_export_validates_the_network() -> None:
    net = image_net()
    with pytest.raises(ModelFormatError, match="dense_digital with 2 outputs"):
        export_torch(net.module, name="m", version="1", class_names=["a", "b"], input_shape=net.input_shape)
    with pytest.raises(ModelFormatError, match="input channels"):
        export_torch(net.module, name="m", version="1", class_names=["a", "b", "c"], input_shape=(2, 8, 8))
    with pytest.raises(ModelFormatError, match=r"nn\.Sequential"):
        export_torch(net.module[0], name="m", version="1", class_names=["a", "b", "c"], input_shape=(1, 8, 8))


def test_step_and_sign_pass_gradients_straight_through() -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    y = step(x)
    assert y.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    y.sum().backward()
    assert x.grad is not None and x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    layer = BinaryLinear(3, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.3, -0.2, 0.0]]))
    out = layer(torch.ones(1, 3))
    assert out.item() == 1.0  # +1 -1 +1 (0 -> +1)
    out.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.tolist() == [[1.0, 1.0, 1.0]]

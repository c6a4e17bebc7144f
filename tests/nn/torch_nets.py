"""Tiny torch networks of the supported modules with fixed weights (seeded numpy, no training),
shared by the export, ONNX import and CLI tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from app.nn.network import DatasetRefs, GradeLimit, PassLimits, Preprocessing
from app.nn.torch_export import BinaryConv2d, BinaryLinear, GlobalAvgPool2d, Step


@dataclass(frozen=True)
class TinyNet:
    """A network and the metadata for :func:`export_torch` / :func:`network_from_onnx`."""

    module: nn.Sequential
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    kinds: tuple[str, ...]  # the layer kinds the export must give
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    datasets: DatasetRefs | None = None
    pass_limits: PassLimits | None = None

    def meta(self) -> dict[str, Any]:
        return {
            "name": "tiny",
            "version": "1",
            "class_names": self.class_names,
            "preprocessing": self.preprocessing,
            "datasets": self.datasets,
            "pass_limits": self.pass_limits,
            "metrics": {"source": "test"},
        }

    def inputs(self, n: int, seed: int = 1) -> NDArray[np.float32]:
        """Network inputs (preprocessing applied), float32 (n, *input_shape)."""
        rng = np.random.default_rng(seed)
        if self.preprocessing.kind == "binarize":
            return self.preprocessing.apply(rng.uniform(0, 1, (n, *self.input_shape)))
        return rng.normal(size=(n, *self.input_shape)).astype(np.float32)


def _set(t: torch.Tensor, values: NDArray[Any]) -> None:
    with torch.no_grad():
        t.copy_(torch.from_numpy(values.astype(np.float32)))


def fix_weights(module: nn.Sequential, seed: int, inputs: NDArray[np.float32]) -> nn.Sequential:
    """Set ``module``'s weights and batch-norm statistics from ``seed``; returns it in eval mode.

    Each batch norm's running mean and variance are those of its input over ``inputs`` (measured
    in eval mode: no gradient, no training), nudged by seeded noise, so that units
    fire on some inputs and not on others. Gains are random with a negative one on channel 0 of
    every batch norm and a zero one (a constant channel) on channel 1 of the first.
    """
    rng = np.random.default_rng(seed)
    module.eval()
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            _set(m.weight, rng.normal(0, 0.5, m.weight.shape))
            if m.bias is not None:
                _set(m.bias, rng.normal(0, 0.1, m.bias.shape))
    x = torch.from_numpy(inputs)
    seen: list[torch.Tensor] = []
    for i, bn in enumerate(bns):
        seen.clear()
        hook = bn.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
        with torch.no_grad():
            module(x)
        hook.remove()
        dims = (0, 2, 3) if seen[0].ndim == 4 else (0,)
        mean = seen[0].mean(dim=dims).numpy()
        std = np.maximum(seen[0].std(dim=dims).numpy(), 0.1)
        n = bn.num_features
        gamma = rng.normal(0, 1, n)
        gamma[0] = -abs(gamma[0]) - 0.1
        if i == 0 and n > 1:
            gamma[1] = 0.0
        _set(bn.weight, gamma)
        _set(bn.bias, rng.normal(0, 0.5, n))
        assert bn.running_mean is not None and bn.running_var is not None
        _set(bn.running_mean, mean + rng.normal(0, 0.1, n) * std)
        _set(bn.running_var, (std * rng.uniform(0.8, 1.25, n)) ** 2)
    return module


def _fixed(module: nn.Sequential, seed: int, *args: Any, **kwargs: Any) -> TinyNet:
    net = TinyNet(module, *args, **kwargs)
    fix_weights(module, seed, net.inputs(256, seed=seed + 1000))
    return net


def image_net(seed: int = 0) -> TinyNet:
    """conv_digital, conv_binary with pool, a nested Sequential, maxpool, flatten, dense_binary and
    a dense_digital head with batch norm; input (1, 8, 8), real."""
    module = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        Step(),
        BinaryConv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.MaxPool2d(2),
        Step(),
        nn.Sequential(BinaryConv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), Step()),
        nn.MaxPool2d(2),
        nn.Flatten(),
        BinaryLinear(32, 10),
        nn.BatchNorm1d(10),
        Step(),
        nn.BatchNorm1d(10),
        nn.Linear(10, 3),
    )
    return _fixed(
        module,
        seed,
        (1, 8, 8),
        ("a", "b", "c"),
        ("conv_digital", "conv_binary", "conv_binary", "maxpool", "flatten", "dense_binary", "dense_digital"),
    )


def gap_net(seed: int = 0, pool: Callable[[], nn.Module] = lambda: nn.AdaptiveAvgPool2d(1)) -> TinyNet:
    """A strided digital convolution pooled before its step, a binary convolution, a global
    average (``pool``), dropout and identity; input (2, 9, 9)."""
    module = nn.Sequential(
        nn.Conv2d(2, 5, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(5),
        nn.MaxPool2d(2),
        Step(),
        BinaryConv2d(5, 7, 3, padding=1),
        nn.BatchNorm2d(7),
        Step(),
        nn.Identity(),
        pool(),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.BatchNorm1d(7),
        nn.Linear(7, 4),
    )
    return _fixed(
        module,
        seed,
        (2, 9, 9),
        ("w", "x", "y", "z"),
        ("conv_digital", "maxpool", "conv_binary", "avgpool_global", "dense_digital"),
    )


def flat_net(seed: int = 0) -> TinyNet:
    """Flat {0,1} input (binarize at 0.5): two dense_binary layers and a dense_digital head, with
    datasets and pass limits."""
    module = nn.Sequential(
        BinaryLinear(16, 12),
        nn.BatchNorm1d(12),
        Step(),
        BinaryLinear(12, 8),
        nn.BatchNorm1d(8),
        Step(),
        nn.Linear(8, 3),
    )
    return _fixed(
        module,
        seed,
        (16,),
        ("lo", "mid", "hi"),
        ("dense_binary", "dense_binary", "dense_digital"),
        preprocessing=Preprocessing("binarize", threshold=0.5),
        datasets=DatasetRefs(calibration="flat-calib@1", test="flat-test@1"),
        pass_limits=PassLimits("absolute", (GradeLimit(1, "PASS_A", 0.9), GradeLimit(2, "PASS_B", 0.8))),
    )


def all_nets() -> dict[str, TinyNet]:
    return {
        "image": image_net(),
        "gap": gap_net(),
        "gap-reducemean": gap_net(pool=GlobalAvgPool2d),
        "flat": flat_net(),
    }

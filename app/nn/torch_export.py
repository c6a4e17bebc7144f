"""Bring a PyTorch model: binary building blocks for ``torch.nn`` and :func:`export_torch`.

A customer builds the network as an ``nn.Sequential`` (nested ``nn.Sequential`` allowed) of:

* :class:`BinaryConv2d` / :class:`BinaryLinear`: latent float weights, ``sign`` (0 -> +1) in the
  forward pass with a straight-through gradient inside |w| <= 1, no bias; inputs must be {0,1}
  (zero padding = input off);
* :class:`Step`: ``x >= 0`` -> {0,1}, straight-through gradient inside |x| <= 1;
* ``nn.Conv2d`` (groups 1, dilation 1, zero padding), ``nn.Linear``, ``nn.BatchNorm1d`` /
  ``nn.BatchNorm2d`` (with running statistics), ``nn.MaxPool2d`` (stride = kernel, no padding),
  ``nn.AdaptiveAvgPool2d(1)`` or :class:`GlobalAvgPool2d`, ``nn.Flatten``; ``nn.Identity`` and
  ``nn.Dropout`` are skipped (identities in eval mode).

:func:`export_torch` reads the eval-mode network into a :class:`~app.nn.network.BinaryNetwork`
through the patterns of :mod:`app.nn.folding`; :func:`onnx_bytes` writes the ONNX file that
:func:`app.nn.onnx_import.network_from_onnx` turns into the same bytes.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from app.nn.folding import (
    BatchNormOp,
    BatchNormParams,
    ConvOp,
    DenseOp,
    FlattenOp,
    GlobalAvgPoolOp,
    MaxPoolOp,
    Op,
    StepOp,
    assembled_network,
    sign_pm1,
)
from app.nn.network import (
    BinaryNetwork,
    DatasetRefs,
    ModelFormatError,
    PassLimits,
    Preprocessing,
)


class UnsupportedModuleError(ModelFormatError):
    """A module (or a sequence of modules) that has no cimcal layer; names the module and its
    position in the flattened ``nn.Sequential``."""

    def __init__(self, message: str, *, module: str, position: int, module_type: str) -> None:
        super().__init__(message)
        self.module = module
        self.position = position
        self.module_type = module_type


# ------------------------------------------------------------------------------------- STE pieces
class _StepSTE(torch.autograd.Function):
    """{0,1} step ``x >= 0``; gradient passed through where |x| <= 1."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class _SignSTE(torch.autograd.Function):
    """{-1,+1} sign (0 -> +1); gradient passed through where |w| <= 1."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).to(grad.dtype)


def step(x: torch.Tensor) -> torch.Tensor:
    """``x >= 0`` as 0./1. of x's dtype, straight-through gradient (the ONNX exporter writes
    GreaterOrEqual + Cast)."""
    out: torch.Tensor = _StepSTE.apply(x)
    return out


def binarize(w: torch.Tensor) -> torch.Tensor:
    """``sign(w)`` with 0 -> +1, straight-through gradient (GreaterOrEqual + Where in ONNX)."""
    out: torch.Tensor = _SignSTE.apply(w)
    return out


# ----------------------------------------------------------------------------------- the modules
class Step(nn.Module):
    """{0,1} activation ``x >= 0`` (straight-through gradient inside |x| <= 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return step(x)


class BinaryConv2d(nn.Conv2d):
    """2-D convolution with weights ``sign(latent)`` in {-1,+1} and no bias; for {0,1} inputs.

    The latent weights are ordinary float parameters (PyTorch's conv initialisation, small enough
    for signs to flip early); clamp them to [-1, 1] after each optimiser step, where the
    straight-through gradient lives.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, binarize(self.weight), None, self.stride, self.padding)


class BinaryLinear(nn.Linear):
    """Fully connected layer with weights ``sign(latent)`` in {-1,+1} and no bias; for {0,1} inputs."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, binarize(self.weight))


class GlobalAvgPool2d(nn.Module):
    """Mean over height and width: (N, C, H, W) -> (N, C) (ReduceMean in ONNX)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


# ------------------------------------------------------------------------------------------ export
def batchnorm_params(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> BatchNormParams:
    """The eval-mode parameters (float32) of a batch norm with running statistics."""
    if bn.running_mean is None or bn.running_var is None:
        raise ModelFormatError("batch norm without running statistics (track_running_stats=False)")
    n = bn.num_features
    return BatchNormParams(
        gamma=tensor_f32(bn.weight) if bn.weight is not None else np.ones(n, np.float32),
        beta=tensor_f32(bn.bias) if bn.bias is not None else np.zeros(n, np.float32),
        mean=tensor_f32(bn.running_mean),
        var=tensor_f32(bn.running_var),
        eps=float(bn.eps),
    )


def tensor_f32(t: torch.Tensor) -> NDArray[np.float32]:
    """A tensor's values as a float32 numpy array (a copy)."""
    return np.array(t.detach().cpu().numpy(), dtype=np.float32)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


_Origin = tuple[int, str, nn.Module]


def _describe(origin: _Origin) -> str:
    position, qualname, module = origin
    return f"{type(module).__name__} {qualname!r} (position {position})"


def _error(origin: _Origin, message: str) -> UnsupportedModuleError:
    position, qualname, module = origin
    return UnsupportedModuleError(
        f"{_describe(origin)}: {message}",
        module=qualname,
        position=position,
        module_type=type(module).__name__,
    )


def _modules(seq: nn.Sequential, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    for child_name, child in seq.named_children():
        qualname = f"{prefix}.{child_name}" if prefix else child_name
        if type(child) is nn.Sequential:
            out.extend(_modules(child, qualname))
        else:
            out.append((qualname, child))
    return out


def _conv_padding(m: nn.Conv2d, origin: _Origin) -> tuple[int, int]:
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return (0, 0)
        kh, kw = _pair(m.kernel_size)
        if kh % 2 == 0 or kw % 2 == 0:
            raise _error(
                origin, "padding='same' with an even kernel pads unevenly; give the padding explicitly"
            )
        return (kh // 2, kw // 2)
    return _pair(m.padding)


def _op(origin: _Origin) -> Op | None:
    """The primitive op of one module (None: an identity in eval mode)."""
    m = origin[2]
    kind = type(m)
    if kind is Step:
        return StepOp(origin)
    if kind in (BinaryConv2d, nn.Conv2d):
        assert isinstance(m, nn.Conv2d)
        if m.groups != 1 or _pair(m.dilation) != (1, 1) or m.padding_mode != "zeros":
            raise _error(origin, "only groups=1, dilation=1 and zero padding are supported")
        if kind is BinaryConv2d:
            return ConvOp(
                origin,
                sign_pm1(tensor_f32(m.weight)).astype(np.float32),
                None,
                _pair(m.stride),
                _conv_padding(m, origin),
            )
        bias = tensor_f32(m.bias) if m.bias is not None else None
        return ConvOp(origin, tensor_f32(m.weight), bias, _pair(m.stride), _conv_padding(m, origin))
    if kind is BinaryLinear:
        assert isinstance(m, nn.Linear)
        return DenseOp(origin, sign_pm1(tensor_f32(m.weight)).astype(np.float32), None)
    if kind is nn.Linear:
        assert isinstance(m, nn.Linear)
        return DenseOp(origin, tensor_f32(m.weight), tensor_f32(m.bias) if m.bias is not None else None)
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d):
        assert isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)
        try:
            return BatchNormOp(origin, batchnorm_params(m))
        except ModelFormatError as e:
            raise _error(origin, str(e)) from e
    if kind is nn.MaxPool2d:
        assert isinstance(m, nn.MaxPool2d)
        kernel = _pair(m.kernel_size)
        stride = _pair(m.stride) if m.stride is not None else kernel
        if stride != kernel or _pair(m.padding) != (0, 0) or _pair(m.dilation) != (1, 1):
            raise _error(origin, "max-pool needs stride = kernel, no padding and dilation 1")
        if m.ceil_mode or m.return_indices:
            raise _error(origin, "max-pool with ceil_mode or return_indices is not supported")
        return MaxPoolOp(origin, kernel)
    if kind is nn.AdaptiveAvgPool2d:
        assert isinstance(m, nn.AdaptiveAvgPool2d)
        if m.output_size not in (1, (1, 1)):
            raise _error(origin, "only the global average (output size 1) is supported")
        return GlobalAvgPoolOp(origin)
    if kind is GlobalAvgPool2d:
        return GlobalAvgPoolOp(origin)
    if kind is nn.Flatten:
        assert isinstance(m, nn.Flatten)
        if m.start_dim != 1 or m.end_dim != -1:
            raise _error(origin, "only nn.Flatten(start_dim=1, end_dim=-1) is supported")
        return FlattenOp(origin)
    if kind in (nn.Identity, nn.Dropout):
        return None
    raise _error(
        origin, "this module has no cimcal layer (see docs/model.md, 'Bring your own PyTorch model')"
    )


def export_torch(
    module: nn.Module,
    *,
    name: str,
    version: str,
    class_names: Sequence[str],
    input_shape: Sequence[int],
    preprocessing: Preprocessing | None = None,
    datasets: DatasetRefs | None = None,
    pass_limits: PassLimits | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> BinaryNetwork:
    """The :class:`BinaryNetwork` that computes what ``module`` (an ``nn.Sequential``) computes in
    eval mode (batch norms with their running statistics, dropout off); the module is not changed.

    ``input_shape``: (C, H, W) or (F,) without the batch dimension; ``preprocessing`` defaults to
    ``Preprocessing("none")`` (real inputs: the first layer is then digital). Raises
    :class:`UnsupportedModuleError` for a module or sequence of modules without a cimcal layer and
    :class:`~app.nn.network.ModelFormatError` for an inconsistent network.
    """
    if type(module) is not nn.Sequential:
        raise ModelFormatError(f"export_torch takes an nn.Sequential, got {type(module).__name__}")
    ops = [
        op
        for pos, (qualname, m) in enumerate(_modules(module))
        if (op := _op((pos, qualname, m))) is not None
    ]
    return assembled_network(
        ops,
        name=name,
        version=version,
        class_names=class_names,
        input_shape=tuple(int(v) for v in input_shape),
        preprocessing=preprocessing,
        datasets=datasets,
        pass_limits=pass_limits,
        metrics=metrics,
        error=_error,
        describe=_describe,
    )


def onnx_bytes(module: nn.Module, input_shape: Sequence[int]) -> bytes:
    """The ONNX file of ``module`` in eval mode (the module's own mode is restored), as
    :func:`app.nn.onnx_import.network_from_onnx` reads it into the same network as
    :func:`export_torch`.

    Uses the TorchScript exporter (``dynamo=False``: the torch.export-based one needs the
    ``onnxscript`` package) without constant folding: with it, the exporter folds each
    ``Conv2d`` + ``BatchNorm2d`` pair in float32 itself, which imports fine but not bit for bit like
    :func:`export_torch`. The batch dimension is dynamic.
    """
    with tempfile.TemporaryDirectory(prefix="cimcal-onnx-") as tmp, warnings.catch_warnings():
        path = Path(tmp) / "model.onnx"
        warnings.filterwarnings(
            "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", message=".*feature will be removed", category=DeprecationWarning)
        torch.onnx.export(
            module,
            (torch.zeros(1, *(int(v) for v in input_shape)),),
            path,
            dynamo=False,
            training=torch.onnx.TrainingMode.EVAL,
            do_constant_folding=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
        return path.read_bytes()

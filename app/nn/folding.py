"""From a chain of framework primitives to cimcal layers: pattern matching and batch-norm folding.

Both front ends, :mod:`app.nn.torch_export` (an ``nn.Sequential``) and :mod:`app.nn.onnx_import`
(an ONNX graph), translate their model into the same list of primitive ops (:class:`ConvOp`,
:class:`DenseOp`, :class:`BatchNormOp`, :class:`MaxPoolOp`, :class:`StepOp`,
:class:`GlobalAvgPoolOp`, :class:`FlattenOp`) holding float32 parameters, and
:func:`assemble_layers` turns that list into layers. Because the patterns and the folding exist
once, and they see the same float32 values, the same network gives byte-identical model files from
either path.

Patterns (brackets: optional):

* ``Conv [BatchNorm] [MaxPool] Step`` -> ``conv_binary`` (with ``pool``) when the weights are all
  ±1, there is no (or an all-zero) bias and the input is {0,1}; otherwise ``conv_digital`` (+ a
  ``maxpool`` layer).
* ``Dense [BatchNorm] Step`` -> ``dense_binary`` (same conditions; digital dense layers with a step
  are not a chip layer).
* ``[BatchNorm] Dense`` as the last ops -> ``dense_digital`` (the logits), batch norm folded.
* ``MaxPool`` -> ``maxpool``; ``GlobalAvgPool`` -> ``avgpool_global``; ``Flatten`` -> ``flatten``
  (dropped where the activation is already flat, e.g. after a global average).

Pooling between batch norm and the step equals pooling after the step (the step is monotone), so
``MaxPool`` may sit on either side of ``Step``. Folding runs in float64 on the float32 parameters;
the batch-norm epsilon is rounded to float32 first because ONNX stores it as a float32 attribute.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from app.nn.network import BinaryNetwork, DatasetRefs, Layer, ModelFormatError, PassLimits, Preprocessing
from app.nn.validation import validate_network

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]


# ---------------------------------------------------------------------------------------- folding
@dataclass(frozen=True)
class BatchNormParams:
    """Eval-mode batch norm ``gamma * (x - mean) / sqrt(var + eps) + beta``; arrays float32 (C,)."""

    gamma: F32
    beta: F32
    mean: F32
    var: F32
    eps: float

    def scale_shift(self) -> tuple[F64, F64]:
        """The batch norm as ``y = scale * x + shift`` per channel (float64)."""
        eps = float(np.float32(self.eps))
        scale = self.gamma.astype(np.float64) / np.sqrt(self.var.astype(np.float64) + eps)
        return scale, self.beta.astype(np.float64) - self.mean.astype(np.float64) * scale


def sign_pm1(latent: NDArray[np.floating]) -> NDArray[np.int8]:
    """Binary weights of latent float weights: +1 where ``w >= 0`` (zero included), else -1."""
    return np.where(np.asarray(latent) >= 0, 1, -1).astype(np.int8)


def fold_binary_threshold(
    weight_pm1: NDArray[np.int8], scale: F64, shift: F64
) -> tuple[NDArray[np.int8], NDArray[np.int32]]:
    """Fold ``step(scale * s + shift)`` on integer sums s into ``s' >= T`` with weights (Cout, ...).

    A negative scale negates that channel's weights (so the compare stays ``>=``); a zero scale
    makes the channel constant (T = -(K+1): always on, or K+1: always off).
    """
    w = np.array(weight_pm1, dtype=np.int8, copy=True)
    k = int(np.prod(w.shape[1:]))
    thr = np.zeros(w.shape[0], dtype=np.int64)
    for j in range(w.shape[0]):
        if scale[j] > 0:
            thr[j] = math.ceil(-shift[j] / scale[j])  # s >= -shift/scale
        elif scale[j] < 0:
            w[j] = -w[j]
            thr[j] = -math.floor(-shift[j] / scale[j])  # s <= t  <=>  -s >= -floor(t)
        else:
            thr[j] = -(k + 1) if shift[j] >= 0 else k + 1
    return w, np.clip(thr, -(k + 1), k + 1).astype(np.int32)


def _scale_shift(bn: BatchNormParams | None, n: int) -> tuple[F64, F64]:
    if bn is None:
        return np.ones(n), np.zeros(n)
    if bn.gamma.shape != (n,):
        raise ModelFormatError(f"batch norm has {bn.gamma.shape[0]} channels, the layer before it {n}")
    return bn.scale_shift()


def conv_digital_layer(
    name: str,
    weight: F32,
    bias: F32 | None,
    bn: BatchNormParams | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> Layer:
    """``step(bn(conv(x, weight) + bias))`` as a ``conv_digital`` layer; weight (Cout, Cin, kh, kw)."""
    cout = weight.shape[0]
    scale, shift = _scale_shift(bn, cout)
    b = np.zeros(cout) if bias is None else bias.astype(np.float64)
    if bn is None:  # nothing to fold: keep the float32 values as they are
        w_out, b_out = weight.astype(np.float32), b.astype(np.float32)
    else:
        w_out = (weight.astype(np.float64) * scale[:, None, None, None]).astype(np.float32)
        b_out = (b * scale + shift).astype(np.float32)
    return Layer("conv_digital", name, weight=w_out, bias=b_out, stride=stride, padding=padding)


def binary_layer(
    kind: str,
    name: str,
    weight_pm1: NDArray[np.integer],
    bn: BatchNormParams | None,
    *,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    pool: tuple[int, int] = (1, 1),
) -> Layer:
    """``step(bn(sum))`` over integer sums as a ``conv_binary`` / ``dense_binary`` layer with
    integer thresholds; weight_pm1 (Cout, ...) in {-1,+1}."""
    cout = weight_pm1.shape[0]
    scale, shift = _scale_shift(bn, cout)
    w, thr = fold_binary_threshold(np.asarray(weight_pm1, dtype=np.int8), scale, shift)
    if kind == "dense_binary":
        return Layer(kind, name, weight=w, threshold=thr)
    return Layer(kind, name, weight=w, threshold=thr, stride=stride, padding=padding, pool=pool)


def dense_digital_layer(name: str, weight: F32, bias: F32 | None, bn: BatchNormParams | None) -> Layer:
    """``weight @ bn(x) + bias`` as a ``dense_digital`` layer; weight (out, in), batch norm on the input."""
    n_out, n_in = weight.shape
    b = np.zeros(n_out) if bias is None else bias.astype(np.float64)
    if bn is None:
        return Layer("dense_digital", name, weight=weight.astype(np.float32), bias=b.astype(np.float32))
    scale, shift = _scale_shift(bn, n_in)
    w64 = weight.astype(np.float64)
    return Layer(
        "dense_digital",
        name,
        weight=(w64 * scale[None, :]).astype(np.float32),
        bias=(w64 @ shift + b).astype(np.float32),
    )


# ------------------------------------------------------------------------------------ primitives
@dataclass(frozen=True)
class ConvOp:
    """2-D convolution, zero padding; weight float32 (Cout, Cin, kh, kw), bias (Cout,) or None."""

    origin: Any
    weight: F32
    bias: F32 | None
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class DenseOp:
    """Fully connected ``x @ weight.T + bias``; weight float32 (out, in)."""

    origin: Any
    weight: F32
    bias: F32 | None


@dataclass(frozen=True)
class BatchNormOp:
    origin: Any
    params: BatchNormParams


@dataclass(frozen=True)
class MaxPoolOp:
    """Max-pool with stride = kernel, no padding, floor mode."""

    origin: Any
    kernel: tuple[int, int]


@dataclass(frozen=True)
class StepOp:
    """``x >= 0`` -> {0,1}."""

    origin: Any


@dataclass(frozen=True)
class GlobalAvgPoolOp:
    """Mean over (H, W): (N, C, H, W) -> (N, C)."""

    origin: Any


@dataclass(frozen=True)
class FlattenOp:
    """(N, ...) -> (N, prod(...))."""

    origin: Any


Op = ConvOp | DenseOp | BatchNormOp | MaxPoolOp | StepOp | GlobalAvgPoolOp | FlattenOp

# Names of the layers by kind; the suffix is the layer's position in the network.
_PREFIX = {
    "conv_digital": "conv",
    "conv_binary": "bconv",
    "dense_binary": "bdense",
    "maxpool": "pool",
    "avgpool_global": "gap",
    "flatten": "flatten",
    "dense_digital": "fc",
}

ErrorFactory = Callable[[Any, str], ModelFormatError]


def _is_pm1(w: NDArray[Any]) -> bool:
    return bool(np.all((w == 1) | (w == -1)))


def assemble_layers(
    ops: Sequence[Op],
    *,
    flat_input: bool,
    binary_input: bool,
    error: ErrorFactory,
    describe: Callable[[Any], str],
) -> tuple[Layer, ...]:
    """The cimcal layers of a chain of primitive ops (see the module docstring).

    ``flat_input``: the network input is (F,); ``binary_input``: it is {0,1} (``binarize``
    preprocessing). ``error(origin, message)`` makes the front end's exception for the op whose
    ``origin`` breaks a pattern; ``describe(origin)`` names an op in a message.
    """
    layers: list[Layer] = []
    flat, binary = flat_input, binary_input
    n = len(ops)

    def name(kind: str) -> str:
        return f"{_PREFIX[kind]}{len(layers)}"

    def at(j: int, *classes: type) -> bool:
        return j < n and isinstance(ops[j], classes)

    def got(j: int) -> str:
        return describe(ops[j].origin) if j < n else "the end of the network"

    def need_flat(op: Op) -> None:
        if not flat:
            raise error(
                op.origin, "a linear layer needs a flat input: put a Flatten (or a global average) first"
            )

    def need_image(op: Op, what: str) -> None:
        if flat:
            raise error(op.origin, f"{what} needs a (C, H, W) input; the activation here is flat")

    i = 0
    while i < n:
        op = ops[i]
        if isinstance(op, DenseOp) and not at(i + 1, BatchNormOp, StepOp):
            # the logits
            need_flat(op)
            if i + 1 < n:
                raise error(
                    op.origin,
                    f"a linear layer without a step must be the last layer (the logits); got {got(i + 1)} after it",
                )
            layers.append(dense_digital_layer(name("dense_digital"), op.weight, op.bias, None))
            i += 1
        elif isinstance(op, BatchNormOp) and at(i + 1, DenseOp) and i + 2 == n:
            dense = ops[i + 1]
            assert isinstance(dense, DenseOp)
            need_flat(dense)
            layers.append(dense_digital_layer(name("dense_digital"), dense.weight, dense.bias, op.params))
            i += 2
        elif isinstance(op, ConvOp | DenseOp):
            # [batch norm] [max-pool] step
            is_conv = isinstance(op, ConvOp)
            if is_conv:
                need_image(op, "a convolution")
            else:
                need_flat(op)
            j = i + 1
            bn = None
            if j < n and isinstance(nxt := ops[j], BatchNormOp):
                bn = nxt.params
                j += 1
            pool = (1, 1)
            if is_conv and j < n and isinstance(nxt := ops[j], MaxPoolOp):
                pool = nxt.kernel
                j += 1
            if not at(j, StepOp):
                pattern = "[batch norm] [max-pool] and a step" if is_conv else "[batch norm] and a step"
                raise error(op.origin, f"must be followed by {pattern} (x >= 0); got {got(j)}")
            # an all-zero bias is no bias (the dynamo exporter writes one for bias-free convolutions)
            no_bias = op.bias is None or not np.any(op.bias)
            on_macro = binary and no_bias and _is_pm1(op.weight)
            if isinstance(op, ConvOp) and on_macro:
                layers.append(
                    binary_layer(
                        "conv_binary",
                        name("conv_binary"),
                        op.weight.astype(np.int8),
                        bn,
                        stride=op.stride,
                        padding=op.padding,
                        pool=pool,
                    )
                )
            elif isinstance(op, ConvOp):
                layers.append(
                    conv_digital_layer(name("conv_digital"), op.weight, op.bias, bn, op.stride, op.padding)
                )
                if pool != (1, 1):
                    layers.append(Layer("maxpool", name("maxpool"), pool=pool))
            elif on_macro:
                layers.append(
                    binary_layer("dense_binary", name("dense_binary"), op.weight.astype(np.int8), bn)
                )
            else:
                raise error(
                    op.origin,
                    "a linear layer followed by a step must be binary: weights ±1 without a bias "
                    "(BinaryLinear) on {0,1} inputs, with its batch norm kept apart (not folded into the "
                    "weights by an exporter's optimizer)",
                )
            binary = True
            i = j + 1
        elif isinstance(op, MaxPoolOp):
            need_image(op, "max-pool")
            layers.append(Layer("maxpool", name("maxpool"), pool=op.kernel))
            i += 1
        elif isinstance(op, GlobalAvgPoolOp):
            need_image(op, "global average pooling")
            layers.append(Layer("avgpool_global", name("avgpool_global")))
            flat, binary = True, False
            i += 1
        elif isinstance(op, FlattenOp):
            if not flat:  # after a global average torch keeps (N, C, 1, 1); the network is flat already
                layers.append(Layer("flatten", name("flatten")))
                flat = True
            i += 1
        elif isinstance(op, BatchNormOp):
            raise error(
                op.origin,
                "batch norm must follow a convolution or linear layer (before its step) or come right "
                f"before the last linear layer; got {got(i + 1)} after it",
            )
        else:
            raise error(
                op.origin,
                "a step must follow a convolution or binary linear layer (with optional batch norm and "
                "max-pool); to binarize the input use Preprocessing('binarize', threshold=...)",
            )
    return tuple(layers)


def assembled_network(
    ops: Sequence[Op],
    *,
    name: str,
    version: str,
    class_names: Sequence[str],
    input_shape: tuple[int, ...],
    preprocessing: Preprocessing | None,
    datasets: DatasetRefs | None,
    pass_limits: PassLimits | None,
    metrics: Mapping[str, Any] | None,
    error: ErrorFactory,
    describe: Callable[[Any], str],
) -> BinaryNetwork:
    """The validated network of a chain of ops with its metadata: what both front ends (PyTorch
    and ONNX) end with, so the same network gives the same model file."""
    prep = preprocessing or Preprocessing()
    layers = assemble_layers(
        ops,
        flat_input=len(input_shape) == 1,
        binary_input=prep.kind == "binarize",
        error=error,
        describe=describe,
    )
    net = BinaryNetwork(
        name,
        version,
        layers,
        tuple(class_names),
        None,
        dict(metrics or {}),
        input_shape=input_shape,
        preprocessing=prep,
        datasets=datasets,
        pass_limits=pass_limits,
    )
    validate_network(net)
    return net

"""Binary networks: layer definitions, the model-level metadata (input, preprocessing, datasets,
pass limits), a numpy forward pass, validation, and the conversion to the chip's network program.

A :class:`BinaryNetwork` is a plain dataclass of numpy arrays (no torch needed to load or run it).
Layer kinds follow ``hardware.chip``:

* ``conv_digital``: float32 ``weight`` (Cout, Cin, kh, kw) and ``bias`` (Cout,) with batch norm
  folded in; output ``step(conv + bias >= 0)`` in {0,1}.
* ``conv_binary``: int8 ``weight`` (Cout, Cin, kh, kw) in {-1,+1} and int32 ``threshold`` (Cout,)
  in MAC units; inputs {0,1}, zero padding (= input off); output channel j is 1 iff
  ``sum_i a_i w_ij >= threshold[j]``, then an optional max-pool (``pool``, stride = kernel).
  Batch norm with a negative gain is folded by negating that channel's weights and threshold, so
  the compare is always ``>=``.
* ``dense_binary``: like ``conv_binary`` with ``weight`` (out, in).
* ``maxpool`` (``pool`` = kernel = stride), ``avgpool_global``, ``flatten``.
* ``dense_digital``: float32 ``weight`` (out, in), ``bias`` (out,): real outputs (the logits).

:func:`app.nn.validation.validate_network` proves that every binary layer is fed {0,1} values: it
follows the value domain of the activations from the input (real, or {0,1} after the ``binarize`` preprocessing)
through the layers (a digital convolution's step and a binary layer make {0,1}; max-pool and
flatten keep the domain; a global average or a digital dense layer makes reals).

Validation lives in :mod:`app.nn.validation`, the file format in :mod:`app.nn.model`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from app.nn.features import DEFAULT_SPEC, FeatureSpec
from hardware.chip import BINARY_KINDS

if TYPE_CHECKING:
    from hardware.chip import NetworkProgram

# The layer vocabulary is the chip's: a model file holds exactly what the chip can execute.
WEIGHTED_DIGITAL_KINDS = ("conv_digital", "dense_digital")
PREPROCESSING_KINDS = ("none", "log_mel", "binarize")
LIMIT_MODES = ("absolute", "relative")

# Bounds: generous for a KWS-sized BNN, small enough to refuse abuse.
MAX_LAYERS = 64
MAX_ARRAY_ELEMENTS = 4 * 2**20
MAX_ACTIVATION_ELEMENTS = 2**20  # per sample, any layer
MAX_INPUT_DIM = 4096
MAX_CLASSES = 1024
MAX_PASS_GRADES = 9
NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
LABEL_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,31}$")
DATASET_REF_RE = re.compile(r"^([A-Za-z0-9_.\-]{1,64})@([A-Za-z0-9_.\-]{1,32})$")


class ModelFormatError(ValueError):
    """A model file is malformed, inconsistent or outside the accepted bounds."""


# -------------------------------------------------------------------------------------- definition
@dataclass(frozen=True)
class Preprocessing:
    """What turns a dataset's ``x`` into the network input.

    * ``none``: ``x`` is the network input (real values).
    * ``log_mel``: ``x`` holds log-mel features made by the front end ``feature_spec`` (the
      station does not recompute them; a dataset must declare the same front end).
    * ``binarize``: ``x >= threshold`` gives {0,1} inputs (the host applies it before the die),
      so the first layer may be binary.
    """

    kind: str = "none"
    feature_spec: FeatureSpec | None = None
    threshold: float | None = None

    def apply(self, x: NDArray[np.floating]) -> NDArray[np.float32]:
        """The network input for ``x`` (N, *input_shape)."""
        if self.kind == "binarize":
            assert self.threshold is not None
            return (np.asarray(x) >= self.threshold).astype(np.float32)
        return np.asarray(x, dtype=np.float32)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        if self.feature_spec is not None:
            d["feature_spec"] = self.feature_spec.as_dict()
        if self.threshold is not None:
            d["threshold"] = self.threshold
        return d


@dataclass(frozen=True)
class GradeLimit:
    """One pass grade: ``accuracy >= min_accuracy`` earns ``soft_bin`` (1-9, 1 best).

    ``min_accuracy`` is a fraction in (0, 1] with absolute limits, and a ratio of the model's own
    ideal-chip accuracy on its test set with relative limits.
    """

    soft_bin: int
    label: str
    min_accuracy: float


@dataclass(frozen=True)
class PassLimits:
    """A model's pass grades, best first (strictly decreasing limits)."""

    mode: str
    grades: tuple[GradeLimit, ...]

    def resolve(self, ideal_accuracy: float | None) -> tuple[GradeLimit, ...]:
        """The grades as absolute accuracy limits (relative ones need the ideal-chip accuracy)."""
        if self.mode == "absolute":
            return self.grades
        if ideal_accuracy is None or not math.isfinite(ideal_accuracy):
            raise ModelFormatError("relative pass limits need the model's ideal-chip accuracy")
        return tuple(
            GradeLimit(g.soft_bin, g.label, round(g.min_accuracy * ideal_accuracy, 6)) for g in self.grades
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "grades": [
                {"soft_bin": g.soft_bin, "label": g.label, "min_accuracy": g.min_accuracy}
                for g in self.grades
            ],
        }


@dataclass(frozen=True)
class DatasetRefs:
    """``name@version`` of the datasets a model is calibrated (activation statistics) and tested on."""

    calibration: str
    test: str

    def as_dict(self) -> dict[str, str]:
        return {"calibration": self.calibration, "test": self.test}


@dataclass(frozen=True)
class Layer:
    """One layer; which fields are used depends on ``kind`` (see the module docstring).

    ``stride``, ``padding`` and ``pool`` are (rows, cols) pairs; ``pool`` (1, 1) means none.
    """

    kind: str
    name: str
    weight: NDArray[Any] | None = None
    bias: NDArray[np.float32] | None = None
    threshold: NDArray[np.int32] | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    pool: tuple[int, int] = (1, 1)

    @property
    def is_binary(self) -> bool:
        return self.kind in BINARY_KINDS

    @property
    def n_rows(self) -> int:
        """Bit-line rows of a binary layer: Cin*kh*kw (conv) or the input size (dense)."""
        if self.weight is None:
            return 0
        return int(np.prod(self.weight.shape[1:]))


@dataclass(frozen=True)
class BinaryNetwork:
    """A binary neural network with its input, preprocessing, datasets, pass limits and metadata.

    Input: float32 (N, *input_shape) after :attr:`preprocessing`; ``input_shape`` is (C, H, W) or
    (F,). Output logits float32 (N, len(class_names)), logit k for ``class_names[k]``.
    ``feature_spec`` alone (the format-1 constructor) means the log-mel front end and its shape.
    ``datasets`` and ``pass_limits`` are None where the file leaves them to the station.
    """

    name: str
    version: str
    layers: tuple[Layer, ...]
    class_names: tuple[str, ...]
    feature_spec: FeatureSpec | None = DEFAULT_SPEC
    metrics: Mapping[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()
    preprocessing: Preprocessing | None = None
    datasets: DatasetRefs | None = None
    pass_limits: PassLimits | None = None

    def __post_init__(self) -> None:
        pre = self.preprocessing
        if pre is None:
            pre = Preprocessing("log_mel", self.feature_spec) if self.feature_spec else Preprocessing()
            object.__setattr__(self, "preprocessing", pre)
        if pre.kind == "log_mel" and self.feature_spec is None:
            object.__setattr__(self, "feature_spec", pre.feature_spec)
        if pre.kind != "log_mel":
            object.__setattr__(self, "feature_spec", None)
        if not self.input_shape:
            spec = self.feature_spec
            if spec is None:
                raise ModelFormatError("input_shape is required without a log-mel feature spec")
            object.__setattr__(self, "input_shape", spec.input_shape)
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))

    @property
    def prep(self) -> Preprocessing:
        assert self.preprocessing is not None  # set in __post_init__
        return self.preprocessing

    def binary_layers(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.is_binary]

    def macros_needed(self, rows: int = 256, cols: int = 64) -> int:
        """Macros the binary layers occupy on a chip of ``rows`` x ``cols`` macros."""
        return sum(
            math.ceil(layer.n_rows / rows) * math.ceil(int(layer.weight.shape[0]) / cols)
            for layer in self.binary_layers()
            if layer.weight is not None
        )


# ----------------------------------------------------------------------------------- forward pass
def _im2col(
    x: NDArray[Any], kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[NDArray[Any], tuple[int, int]]:
    """Patches (N*Ho*Wo, C*kh*kw) of x (N, C, H, W), rows in (C, kh, kw) order; zero padding."""
    n, c, _, _ = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    win = np.lib.stride_tricks.sliding_window_view(xp, kernel, axis=(2, 3))  # (N, C, H', W', kh, kw)
    win = win[:, :, :: stride[0], :: stride[1]]
    ho, wo = win.shape[2], win.shape[3]
    patches = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kernel[0] * kernel[1])
    return patches, (ho, wo)


def _maxpool(x: NDArray[Any], kernel: tuple[int, int]) -> NDArray[Any]:
    """Max-pool (N, C, H, W) with stride = kernel; trailing rows/cols that do not fill a window drop."""
    if kernel == (1, 1):
        return x
    n, c, h, w = x.shape
    ho, wo = h // kernel[0], w // kernel[1]
    x = x[:, :, : ho * kernel[0], : wo * kernel[1]].reshape(n, c, ho, kernel[0], wo, kernel[1])
    return x.max(axis=(3, 5))


def binary_sums(layer: Layer, inputs: NDArray[Any]) -> NDArray[np.int32]:
    """Exact bit-line sums (n, Cout) int32 of a binary layer for inputs (n, K) in {0,1}."""
    assert layer.weight is not None
    w = layer.weight.reshape(layer.weight.shape[0], -1).T.astype(np.float32)  # (K, Cout)
    # float32 matmul is exact here: |sum| <= K < 2**24, and it is far faster than integer matmul.
    return (np.asarray(inputs, dtype=np.float32) @ w).astype(np.int32)


def _forward_batch(net: BinaryNetwork, x: NDArray[np.float32]) -> NDArray[np.float32]:
    n = x.shape[0]
    h: NDArray[Any] = x
    for layer in net.layers:
        if layer.kind == "conv_digital":
            assert layer.weight is not None and layer.bias is not None
            cout, _, kh, kw = layer.weight.shape
            patches, (ho, wo) = _im2col(h.astype(np.float32), (kh, kw), layer.stride, layer.padding)
            out = patches @ layer.weight.reshape(cout, -1).T.astype(np.float32) + layer.bias.astype(
                np.float32
            )
            h = (out >= 0).astype(np.uint8).reshape(n, ho, wo, cout).transpose(0, 3, 1, 2)
        elif layer.kind == "conv_binary":
            assert layer.weight is not None and layer.threshold is not None
            cout, _, kh, kw = layer.weight.shape
            patches, (ho, wo) = _im2col(h, (kh, kw), layer.stride, layer.padding)
            on = binary_sums(layer, patches) >= layer.threshold[None, :]
            h = _maxpool(on.astype(np.uint8).reshape(n, ho, wo, cout).transpose(0, 3, 1, 2), layer.pool)
        elif layer.kind == "dense_binary":
            assert layer.threshold is not None
            h = (binary_sums(layer, h.reshape(n, -1)) >= layer.threshold[None, :]).astype(np.uint8)
        elif layer.kind == "maxpool":
            h = _maxpool(h, layer.pool)
        elif layer.kind == "avgpool_global":
            h = h.astype(np.float32).mean(axis=(2, 3))
        elif layer.kind == "flatten":
            h = h.reshape(n, -1)
        elif layer.kind == "dense_digital":
            assert layer.weight is not None and layer.bias is not None
            h = h.reshape(n, -1).astype(np.float32) @ layer.weight.T.astype(np.float32) + layer.bias
        else:  # pragma: no cover - validated on construction/load
            raise ModelFormatError(f"unknown layer kind {layer.kind!r}")
    return np.asarray(h, dtype=np.float32)


def forward_software(
    net: BinaryNetwork, features: NDArray[np.floating], batch_size: int = 256
) -> NDArray[np.float32]:
    """Reference forward pass, no hardware: network inputs float32 (N, *input_shape) (preprocessing
    already applied) -> logits float32 (N, n_classes). Binary layers use exact integer bit-line sums
    (no ADC clipping)."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != len(net.input_shape) + 1 or tuple(x.shape[1:]) != net.input_shape:
        raise ValueError(f"features must be (N, {', '.join(map(str, net.input_shape))}), got {x.shape}")
    outs = [_forward_batch(net, x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    if not outs:
        return np.zeros((0, len(net.class_names)), dtype=np.float32)
    return np.concatenate(outs)


def predict(net: BinaryNetwork, features: NDArray[np.floating], batch_size: int = 256) -> NDArray[np.int64]:
    """Predicted class indices (N,) int64."""
    return forward_software(net, features, batch_size).argmax(axis=1).astype(np.int64)


def accuracy(net: BinaryNetwork, features: NDArray[np.floating], labels: NDArray[np.integer]) -> float:
    """Top-1 accuracy in [0, 1] of :func:`predict` against labels (N,)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return float("nan")
    return float(np.mean(predict(net, features) == labels))


# --------------------------------------------------------------------------------- the chip program
def to_program(net: BinaryNetwork) -> NetworkProgram:
    """The chip's :class:`hardware.chip.NetworkProgram` for ``net`` (model-level, same for every die)."""
    from hardware.chip import LayerSpec, NetworkProgram

    specs = []
    for layer in net.layers:
        attrs: dict[str, Any] = {}
        arrays: dict[str, NDArray[Any]] = {}
        if layer.kind in ("conv_digital", "conv_binary"):
            attrs["stride"] = list(layer.stride)
            attrs["padding"] = list(layer.padding)
        if layer.kind == "conv_binary":
            attrs["pool"] = list(layer.pool)
        if layer.kind == "maxpool":
            attrs["kernel"] = list(layer.pool)
        if layer.is_binary:
            assert layer.weight is not None and layer.threshold is not None
            attrs["weight_shape"] = list(layer.weight.shape)
            arrays["weight"] = np.asarray(layer.weight, dtype=np.int8)
            arrays["threshold"] = np.asarray(layer.threshold, dtype=np.int32)
        elif layer.kind in WEIGHTED_DIGITAL_KINDS:
            assert layer.weight is not None and layer.bias is not None
            arrays["weight"] = np.asarray(layer.weight, dtype=np.float32)
            arrays["bias"] = np.asarray(layer.bias, dtype=np.float32)
        specs.append(LayerSpec(layer.kind, layer.name, attrs, arrays))
    return NetworkProgram(
        name=net.name,
        version=net.version,
        input_shape=net.input_shape,
        class_names=tuple(net.class_names),
        layers=tuple(specs),
    )

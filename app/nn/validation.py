"""Validation of a :class:`~app.nn.network.BinaryNetwork`: names and bounds, input shape,
preprocessing, dataset references, pass limits, shapes chaining through the layers, and the proof
that every binary layer is fed {0,1} values (the value domain is followed from the input through
the layers: a digital convolution's step and a binary layer make {0,1}; max-pool and flatten keep
the domain; a global average or a digital dense layer make reals)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from app.nn.network import (
    DATASET_REF_RE,
    LABEL_RE,
    LIMIT_MODES,
    MAX_ACTIVATION_ELEMENTS,
    MAX_ARRAY_ELEMENTS,
    MAX_CLASSES,
    MAX_INPUT_DIM,
    MAX_LAYERS,
    MAX_PASS_GRADES,
    NAME_RE,
    PREPROCESSING_KINDS,
    WEIGHTED_DIGITAL_KINDS,
    BinaryNetwork,
    Layer,
    ModelFormatError,
    PassLimits,
    Preprocessing,
)
from hardware.chip import BINARY_KINDS, LAYER_KINDS


def validate_network(net: BinaryNetwork) -> None:
    """Check a network's consistency and bounds; raises :class:`ModelFormatError`.

    Shapes must chain from ``input_shape`` to ``len(class_names)`` logits through the layers, every
    binary layer must be fed {0,1} values (see the module docstring), and the preprocessing,
    dataset references and pass limits must be well formed.
    """
    if not NAME_RE.fullmatch(net.name) or not NAME_RE.fullmatch(net.version) or len(net.version) > 32:
        raise ModelFormatError("name (1-64) and version (1-32) must be characters of [A-Za-z0-9_.-]")
    if not 2 <= len(net.class_names) <= MAX_CLASSES or len(set(net.class_names)) != len(net.class_names):
        raise ModelFormatError(f"need 2..{MAX_CLASSES} distinct class names")
    if any(not isinstance(c, str) or not 1 <= len(c) <= 64 or "\x00" in c for c in net.class_names):
        raise ModelFormatError("class names must be strings of 1-64 characters")
    _check_input_shape(net.input_shape)
    _check_preprocessing(net.prep, net.input_shape)
    if net.datasets is not None:
        for role, ref in net.datasets.as_dict().items():
            if not isinstance(ref, str) or not DATASET_REF_RE.fullmatch(ref):
                raise ModelFormatError(f"datasets.{role} must be 'name@version', got {ref!r}")
    if net.pass_limits is not None:
        check_pass_limits(net.pass_limits)
    if not net.layers or len(net.layers) > MAX_LAYERS:
        raise ModelFormatError(f"need 1..{MAX_LAYERS} layers")
    names = [layer.name for layer in net.layers]
    if len(set(names)) != len(names) or not all(NAME_RE.fullmatch(n) for n in names):
        raise ModelFormatError("layer names must be unique, 1-64 characters of [A-Za-z0-9_.-]")
    shape: tuple[int, ...] = net.input_shape
    binary = net.prep.kind == "binarize"
    source = f"the {net.prep.kind!r} preprocessing"
    for layer in net.layers:
        if layer.is_binary and not binary:
            raise ModelFormatError(
                f"layer {layer.name} ({layer.kind}) receives non-binary inputs from {source}; "
                "a binary layer needs {0,1} inputs (a step activation, a binary layer or 'binarize' first)"
            )
        shape = _check_layer(layer, shape)
        if int(np.prod(shape)) > MAX_ACTIVATION_ELEMENTS or min(shape) < 1:
            raise ModelFormatError(f"layer {layer.name}: output shape {shape} is empty or too large")
        if layer.kind in ("conv_digital", "conv_binary", "dense_binary"):
            binary = True
        elif layer.kind in ("avgpool_global", "dense_digital"):
            binary = False
        if layer.kind not in ("maxpool", "flatten"):
            source = f"layer {layer.name} ({layer.kind})"
    if net.layers[-1].kind != "dense_digital" or shape != (len(net.class_names),):
        raise ModelFormatError(f"the last layer must be dense_digital with {len(net.class_names)} outputs")


def _check_input_shape(shape: tuple[int, ...]) -> None:
    if len(shape) not in (1, 3) or not all(1 <= v <= MAX_INPUT_DIM for v in shape):
        raise ModelFormatError(
            f"input shape must be (C, H, W) or (F,) with sizes 1..{MAX_INPUT_DIM}, got {shape}"
        )
    if int(np.prod(shape)) > MAX_ACTIVATION_ELEMENTS:
        raise ModelFormatError(f"input shape {shape} is larger than {MAX_ACTIVATION_ELEMENTS} values")


def _check_preprocessing(pre: Preprocessing, input_shape: tuple[int, ...]) -> None:
    if pre.kind not in PREPROCESSING_KINDS:
        raise ModelFormatError(f"preprocessing kind {pre.kind!r} is not one of {list(PREPROCESSING_KINDS)}")
    if pre.kind == "log_mel":
        if pre.feature_spec is None:
            raise ModelFormatError("log_mel preprocessing needs a feature_spec")
        if pre.feature_spec.input_shape != input_shape:
            raise ModelFormatError(
                f"input shape {list(input_shape)} != the log-mel front end's {list(pre.feature_spec.input_shape)}"
            )
    elif pre.feature_spec is not None:
        raise ModelFormatError(f"{pre.kind!r} preprocessing takes no feature_spec")
    if pre.kind == "binarize":
        if pre.threshold is None or not math.isfinite(pre.threshold):
            raise ModelFormatError("binarize preprocessing needs a finite threshold")
    elif pre.threshold is not None:
        raise ModelFormatError(f"{pre.kind!r} preprocessing takes no threshold")


def check_pass_limits(limits: PassLimits) -> None:
    """Grades 1..9 in increasing soft-bin order with strictly decreasing limits in (0, 1]."""
    if limits.mode not in LIMIT_MODES:
        raise ModelFormatError(f"pass_limits.mode must be one of {list(LIMIT_MODES)}, got {limits.mode!r}")
    if not 1 <= len(limits.grades) <= MAX_PASS_GRADES:
        raise ModelFormatError(f"pass_limits needs 1..{MAX_PASS_GRADES} grades")
    prev_bin, prev_limit = 0, math.inf
    for g in limits.grades:
        if not 1 <= g.soft_bin <= 9 or g.soft_bin <= prev_bin:
            raise ModelFormatError("pass grades need soft bins 1..9 in increasing order")
        if not LABEL_RE.fullmatch(g.label):
            raise ModelFormatError(f"grade label {g.label!r} must match {LABEL_RE.pattern}")
        if not (0.0 < g.min_accuracy <= 1.0) or g.min_accuracy >= prev_limit:
            raise ModelFormatError("grade limits must lie in (0, 1] and fall strictly from grade to grade")
        prev_bin, prev_limit = g.soft_bin, g.min_accuracy


def _check_array(layer: Layer, arr: NDArray[Any], what: str, ndim: int) -> None:
    if arr.ndim != ndim or arr.size > MAX_ARRAY_ELEMENTS or arr.size == 0:
        raise ModelFormatError(
            f"layer {layer.name}: {what} must be {ndim}-D, non-empty, <= {MAX_ARRAY_ELEMENTS}"
        )


def _check_layer(layer: Layer, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Validate one layer against its input shape (C, H, W) or (F,); returns its output shape."""
    k = layer.kind
    where = f"layer {layer.name} ({k})"
    if k not in LAYER_KINDS:
        raise ModelFormatError(f"{where}: unknown kind")
    if (
        k not in BINARY_KINDS
        and k not in WEIGHTED_DIGITAL_KINDS
        and (layer.weight is not None or layer.bias is not None or layer.threshold is not None)
    ):
        raise ModelFormatError(f"{where}: this kind takes no weight, bias or threshold")
    if k in BINARY_KINDS and layer.bias is not None:
        raise ModelFormatError(f"{where}: binary layers take a threshold, not a bias")
    if k in BINARY_KINDS or k in WEIGHTED_DIGITAL_KINDS:
        if layer.weight is None:
            raise ModelFormatError(f"{where}: no weight")
        w = layer.weight
        _check_array(layer, w, "weight", 4 if k.startswith("conv") else 2)
        if k in BINARY_KINDS:
            if w.dtype.kind not in "iuf" or not np.all((w == 1) | (w == -1)):
                raise ModelFormatError(f"{where}: binary weights must be -1 or +1")
            if layer.threshold is None or layer.threshold.shape != (w.shape[0],):
                raise ModelFormatError(f"{where}: needs one integer threshold per output")
            if layer.threshold.dtype.kind not in "iu":
                raise ModelFormatError(f"{where}: thresholds must be integers")
        else:
            if w.dtype.kind != "f" or not np.all(np.isfinite(w)):
                raise ModelFormatError(f"{where}: weights must be finite floats")
            b = layer.bias
            if b is None or b.shape != (w.shape[0],) or b.dtype.kind != "f" or not np.all(np.isfinite(b)):
                raise ModelFormatError(f"{where}: bias must be finite floats of shape ({w.shape[0]},)")
    if k in ("conv_digital", "conv_binary"):
        assert layer.weight is not None
        if len(shape) != 3:
            raise ModelFormatError(f"{where}: needs a (C, H, W) input, got {shape}")
        cout, cin, kh, kw = layer.weight.shape
        if cin != shape[0]:
            raise ModelFormatError(f"{where}: weight expects {cin} input channels, input has {shape[0]}")
        (sh, sw), (ph, pw) = layer.stride, layer.padding
        ho = (shape[1] + 2 * ph - kh) // sh + 1
        wo = (shape[2] + 2 * pw - kw) // sw + 1
        if ho < 1 or wo < 1 or ph >= kh or pw >= kw:
            raise ModelFormatError(f"{where}: kernel/padding do not fit input {shape}")
        if k == "conv_binary":
            ho, wo = ho // layer.pool[0], wo // layer.pool[1]
        return (cout, ho, wo)
    if k == "maxpool":
        if len(shape) != 3:
            raise ModelFormatError(f"{where}: needs a (C, H, W) input")
        return (shape[0], shape[1] // layer.pool[0], shape[2] // layer.pool[1])
    if k == "avgpool_global":
        if len(shape) != 3:
            raise ModelFormatError(f"{where}: needs a (C, H, W) input")
        return (shape[0],)
    if k == "flatten":
        return (int(np.prod(shape)),)
    # dense_binary / dense_digital
    assert layer.weight is not None
    n_in = int(np.prod(shape))
    if k == "dense_binary" and len(shape) != 1:
        raise ModelFormatError(f"{where}: needs a flat input (flatten or avgpool first)")
    if layer.weight.shape[1] != n_in:
        raise ModelFormatError(f"{where}: weight expects {layer.weight.shape[1]} inputs, got {n_in}")
    return (int(layer.weight.shape[0]),)

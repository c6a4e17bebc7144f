"""The model file format (``cimcal-bnn``): one ``.npz`` of the network's arrays plus a JSON manifest.

Format 2 (written by :func:`model_bytes`): ``input`` (``shape`` (C, H, W) or (F,), and
``preprocessing``: ``none``, ``log_mel`` with its ``feature_spec``, or ``binarize`` with a
``threshold``), ``class_names``, ``layers`` (kind, name, stride, padding, pool, weight shape,
integer thresholds), optional ``datasets`` (``calibration`` and ``test`` as ``name@version``),
optional ``pass_limits`` (``mode`` absolute or relative, ``grades``) and ``metrics``. Format 1 files
(the log-mel KWS input, no datasets, no limits) keep loading. Arrays: ``<layer>.weight`` (int8 in
{-1,+1} for binary layers, float32 for digital ones) and ``<layer>.bias`` (float32, digital
layers). See ``docs/model.md``. The network itself is :mod:`app.nn.network`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from app.nn.features import FeatureSpec
from app.nn.ideal_chip import ChipAgreement, ideal_chip_agreement
from app.nn.network import (
    MAX_LAYERS,
    WEIGHTED_DIGITAL_KINDS,
    BinaryNetwork,
    DatasetRefs,
    GradeLimit,
    Layer,
    ModelFormatError,
    PassLimits,
    Preprocessing,
    accuracy,
    binary_sums,
    forward_software,
    predict,
    to_program,
)
from app.nn.npz import MANIFEST_KEY, read_npz, write_npz
from app.nn.validation import validate_network
from hardware.chip import BINARY_KINDS, LAYER_KINDS

MODEL_FORMAT = "cimcal-bnn"
MODEL_FORMAT_VERSION = 2
READ_FORMAT_VERSIONS = (1, 2)

# Bounds for uploaded models: generous for a KWS-sized BNN, small enough to refuse abuse.
MAX_MODEL_BYTES = 16 * 2**20
MAX_UNCOMPRESSED_BYTES = 64 * 2**20

_V1_KEYS = {"format", "format_version", "name", "version", "input", "class_names", "layers", "metrics"}
_V2_KEYS = _V1_KEYS | {"datasets", "pass_limits"}


# ------------------------------------------------------------------------------------------ writing
def _layer_manifest(layer: Layer) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": layer.kind, "name": layer.name}
    if layer.kind in ("conv_digital", "conv_binary"):
        d["stride"] = list(layer.stride)
        d["padding"] = list(layer.padding)
    if layer.kind in ("conv_binary", "maxpool"):
        d["pool"] = list(layer.pool)
    if layer.weight is not None:
        d["weight_shape"] = list(layer.weight.shape)
    if layer.threshold is not None:
        d["threshold"] = [int(t) for t in layer.threshold]
    return d


def model_manifest(net: BinaryNetwork) -> dict[str, Any]:
    """The JSON manifest of a network (format 2: what :func:`model_bytes` stores next to the arrays)."""
    d: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "name": net.name,
        "version": net.version,
        "input": {"shape": list(net.input_shape), "preprocessing": net.prep.as_dict()},
        "class_names": list(net.class_names),
        "layers": [_layer_manifest(layer) for layer in net.layers],
        "metrics": dict(net.metrics),
    }
    if net.datasets is not None:
        d["datasets"] = net.datasets.as_dict()
    if net.pass_limits is not None:
        d["pass_limits"] = net.pass_limits.as_dict()
    return d


def model_bytes(net: BinaryNetwork) -> bytes:
    """The model file's bytes (format 2; deterministic for a given network)."""
    validate_network(net)
    arrays: dict[str, NDArray[Any]] = {}
    for layer in net.layers:
        if layer.weight is not None:
            dtype = np.int8 if layer.is_binary else np.float32
            arrays[f"{layer.name}.weight"] = np.ascontiguousarray(layer.weight, dtype=dtype)
        if layer.bias is not None:
            arrays[f"{layer.name}.bias"] = np.ascontiguousarray(layer.bias, dtype=np.float32)
    return write_npz(model_manifest(net), arrays)


def save_model(net: BinaryNetwork, path: Path | str) -> Path:
    """Write ``net`` to ``path`` (a ``.npz``); returns the path."""
    path = Path(path)
    path.write_bytes(model_bytes(net))
    return path


# ------------------------------------------------------------------------------------------ reading
def load_model(path: Path | str) -> BinaryNetwork:
    """Read and validate a model file (see :func:`load_model_bytes`)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ModelFormatError(f"cannot read model file {path}: {e}") from e
    if size > MAX_MODEL_BYTES:
        raise ModelFormatError(f"model file is {size} bytes; the limit is {MAX_MODEL_BYTES}")
    return load_model_bytes(path.read_bytes())


def load_model_bytes(data: bytes) -> BinaryNetwork:
    """Parse and strictly validate a model file's bytes (format 1 or 2); raises :class:`ModelFormatError`.
    See :func:`read_model_bytes`."""
    return read_model_bytes(data)[0]


def read_model_bytes(data: bytes) -> tuple[BinaryNetwork, int]:
    """The network of a model file's bytes and the format version the file was written in.

    Checks: size bounds, a numpy ``.npz`` without pickles, a manifest of a known format version
    with no unknown keys, layer kinds, shapes that chain from the input to ``len(class_names)``
    logits, {0,1} inputs to every binary layer, binary weights in {-1,+1}, integer thresholds,
    finite float parameters, well-formed preprocessing, dataset references and pass limits, and no
    unexpected arrays.
    """
    manifest, arrays = read_npz(
        data,
        max_bytes=MAX_MODEL_BYTES,
        max_uncompressed=MAX_UNCOMPRESSED_BYTES,
        error=ModelFormatError,
        what="model",
    )
    net = _network_from_manifest(manifest, arrays)
    validate_network(net)
    return net, int(manifest["format_version"])


def _req(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, Mapping) or key not in d:
        raise ModelFormatError(f"{where}: missing {key!r}")
    v = d[key]
    if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
        raise ModelFormatError(f"{where}: {key!r} has the wrong type ({type(v).__name__})")
    return v


def _pair(v: Any, where: str, minimum: int) -> tuple[int, int]:
    if (
        not isinstance(v, list)
        or len(v) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) and minimum <= x <= 64 for x in v)
    ):
        raise ModelFormatError(f"{where} must be two integers in [{minimum}, 64], got {v!r}")
    return (int(v[0]), int(v[1]))


def _only(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unexpected = set(d) - allowed
    if unexpected:
        raise ModelFormatError(f"{where}: unexpected keys {sorted(unexpected)}")


def _feature_spec(d: Any, where: str) -> FeatureSpec:
    try:
        return FeatureSpec.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ModelFormatError(f"{where} is invalid: {e}") from e


def _shape(v: Any, where: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise ModelFormatError(f"{where} must be a list of integers, got {v!r}")
    return tuple(v)


def _input_v1(inp: Mapping[str, Any]) -> tuple[tuple[int, ...], Preprocessing]:
    _only(inp, {"shape", "feature_spec"}, "manifest.input")
    spec = _feature_spec(_req(inp, "feature_spec", dict, "manifest.input"), "manifest.input.feature_spec")
    if list(spec.input_shape) != inp.get("shape"):
        raise ModelFormatError(
            f"manifest.input.shape {inp.get('shape')!r} != feature spec {list(spec.input_shape)}"
        )
    return spec.input_shape, Preprocessing("log_mel", spec)


def _input_v2(inp: Mapping[str, Any]) -> tuple[tuple[int, ...], Preprocessing]:
    _only(inp, {"shape", "preprocessing"}, "manifest.input")
    shape = _shape(_req(inp, "shape", list, "manifest.input"), "manifest.input.shape")
    pre = _req(inp, "preprocessing", dict, "manifest.input")
    return shape, parse_preprocessing(pre, "manifest.input.preprocessing")


def parse_preprocessing(pre: Any, where: str = "preprocessing") -> Preprocessing:
    """A ``preprocessing`` object of the manifest; raises :class:`ModelFormatError`."""
    if not isinstance(pre, dict):
        raise ModelFormatError(f"{where} must be an object")
    kind = _req(pre, "kind", str, where)
    if kind == "log_mel":
        _only(pre, {"kind", "feature_spec"}, where)
        spec = _feature_spec(_req(pre, "feature_spec", dict, where), f"{where}.feature_spec")
        return Preprocessing("log_mel", spec)
    if kind == "binarize":
        _only(pre, {"kind", "threshold"}, where)
        threshold = _req(pre, "threshold", (int, float), where)
        return Preprocessing("binarize", threshold=float(threshold))
    if kind == "none":
        _only(pre, {"kind"}, where)
        return Preprocessing("none")
    raise ModelFormatError(f"{where}.kind {kind!r} is not one of none, log_mel, binarize")


def _datasets(d: Any) -> DatasetRefs:
    where = "manifest.datasets"
    if not isinstance(d, dict):
        raise ModelFormatError(f"{where} must be an object")
    _only(d, {"calibration", "test"}, where)
    return DatasetRefs(_req(d, "calibration", str, where), _req(d, "test", str, where))


def parse_pass_limits(d: Any, where: str = "manifest.pass_limits") -> PassLimits:
    """A ``pass_limits`` object of the manifest; raises :class:`ModelFormatError`."""
    if not isinstance(d, dict):
        raise ModelFormatError(f"{where} must be an object")
    _only(d, {"mode", "grades"}, where)
    mode = _req(d, "mode", str, where)
    grades = []
    for i, g in enumerate(_req(d, "grades", list, where)):
        w = f"{where}.grades[{i}]"
        if not isinstance(g, dict):
            raise ModelFormatError(f"{w} must be an object")
        _only(g, {"soft_bin", "label", "min_accuracy"}, w)
        grades.append(
            GradeLimit(
                soft_bin=_req(g, "soft_bin", int, w),
                label=_req(g, "label", str, w),
                min_accuracy=float(_req(g, "min_accuracy", (int, float), w)),
            )
        )
    return PassLimits(mode, tuple(grades))


_MANIFEST_LAYER_KEYS: dict[str, set[str]] = {
    "conv_digital": {"kind", "name", "stride", "padding", "weight_shape"},
    "conv_binary": {"kind", "name", "stride", "padding", "pool", "weight_shape", "threshold"},
    "maxpool": {"kind", "name", "pool"},
    "avgpool_global": {"kind", "name"},
    "flatten": {"kind", "name"},
    "dense_binary": {"kind", "name", "weight_shape", "threshold"},
    "dense_digital": {"kind", "name", "weight_shape"},
}


def _layer(i: int, ld: Any, arrays: Mapping[str, NDArray[Any]], used: set[str]) -> Layer:
    where = f"manifest.layers[{i}]"
    kind = _req(ld, "kind", str, where)
    lname = _req(ld, "name", str, where)
    if kind not in LAYER_KINDS:
        raise ModelFormatError(f"{where}: unknown kind {kind!r}")
    unexpected = set(ld) - _MANIFEST_LAYER_KEYS[kind]
    if unexpected:
        raise ModelFormatError(f"{where}: unexpected keys {sorted(unexpected)} for a {kind} layer")
    weight = bias = threshold = None
    if kind in BINARY_KINDS or kind in WEIGHTED_DIGITAL_KINDS:
        key = f"{lname}.weight"
        if key not in arrays:
            raise ModelFormatError(f"{where}: array {key!r} is missing")
        weight = arrays[key]
        used.add(key)
        shape = _req(ld, "weight_shape", list, where)
        if list(weight.shape) != shape:
            raise ModelFormatError(f"{where}: weight shape {list(weight.shape)} != manifest {shape}")
    if kind in WEIGHTED_DIGITAL_KINDS:
        key = f"{lname}.bias"
        if key not in arrays:
            raise ModelFormatError(f"{where}: array {key!r} is missing")
        bias = arrays[key]
        used.add(key)
    if kind in BINARY_KINDS:
        thr = _req(ld, "threshold", list, where)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in thr):
            raise ModelFormatError(f"{where}: thresholds must be integers")
        if any(abs(t) > 2**31 - 1 for t in thr):
            raise ModelFormatError(f"{where}: thresholds out of int32 range")
        threshold = np.asarray(thr, dtype=np.int32)
    conv = kind in ("conv_digital", "conv_binary")
    return Layer(
        kind=kind,
        name=lname,
        weight=weight,
        bias=bias,
        threshold=threshold,
        stride=_pair(ld.get("stride"), f"{where}.stride", 1) if conv else (1, 1),
        padding=_pair(ld.get("padding"), f"{where}.padding", 0) if conv else (0, 0),
        pool=_pair(ld.get("pool"), f"{where}.pool", 1) if kind in ("conv_binary", "maxpool") else (1, 1),
    )


def _network_from_manifest(manifest: Any, arrays: dict[str, NDArray[Any]]) -> BinaryNetwork:
    if not isinstance(manifest, dict):
        raise ModelFormatError("manifest must be a JSON object")
    if manifest.get("format") != MODEL_FORMAT:
        raise ModelFormatError(f"not a {MODEL_FORMAT} model (format {manifest.get('format')!r})")
    fv = manifest.get("format_version")
    if isinstance(fv, bool) or fv not in READ_FORMAT_VERSIONS:
        raise ModelFormatError(
            f"unsupported model format version {fv!r} (reads {list(READ_FORMAT_VERSIONS)})"
        )
    _only(manifest, _V1_KEYS if fv == 1 else _V2_KEYS, "manifest")
    name = _req(manifest, "name", str, "manifest")
    version = _req(manifest, "version", str, "manifest")
    inp = _req(manifest, "input", dict, "manifest")
    input_shape, pre = _input_v1(inp) if fv == 1 else _input_v2(inp)
    class_names = _req(manifest, "class_names", list, "manifest")
    if not all(isinstance(c, str) for c in class_names):
        raise ModelFormatError("manifest.class_names must be strings")
    metrics = manifest.get("metrics", {})
    if not isinstance(metrics, dict):
        raise ModelFormatError("manifest.metrics must be an object")
    layer_list = _req(manifest, "layers", list, "manifest")
    if len(layer_list) > MAX_LAYERS:
        raise ModelFormatError(f"{len(layer_list)} layers; the limit is {MAX_LAYERS}")
    used: set[str] = set()
    layers = tuple(_layer(i, ld, arrays, used) for i, ld in enumerate(layer_list))
    extra = sorted(set(arrays) - used)
    if extra:
        raise ModelFormatError(f"model archive has unexpected arrays {extra}")
    datasets = _datasets(manifest["datasets"]) if "datasets" in manifest else None
    limits = parse_pass_limits(manifest["pass_limits"]) if "pass_limits" in manifest else None
    try:
        return BinaryNetwork(
            name,
            version,
            layers,
            tuple(class_names),
            pre.feature_spec,
            metrics,
            input_shape=input_shape,
            preprocessing=pre,
            datasets=datasets,
            pass_limits=limits,
        )
    except (TypeError, ValueError) as e:
        raise ModelFormatError(f"manifest is inconsistent: {e}") from e


# ------------------------------------------------------------------------------------ reference
def reference_model_path() -> Path:
    """The committed, trained reference KWS model (``app/nn/reference/kws_bnn.npz``)."""
    return Path(__file__).with_name("reference") / "kws_bnn.npz"


def load_reference_model() -> BinaryNetwork:
    return load_model(reference_model_path())


__all__: Sequence[str] = (
    "BINARY_KINDS",
    "LAYER_KINDS",
    "MANIFEST_KEY",
    "BinaryNetwork",
    "ChipAgreement",
    "DatasetRefs",
    "GradeLimit",
    "Layer",
    "ModelFormatError",
    "PassLimits",
    "Preprocessing",
    "accuracy",
    "binary_sums",
    "forward_software",
    "ideal_chip_agreement",
    "load_model",
    "load_model_bytes",
    "load_reference_model",
    "model_bytes",
    "model_manifest",
    "parse_pass_limits",
    "parse_preprocessing",
    "predict",
    "read_model_bytes",
    "reference_model_path",
    "save_model",
    "to_program",
    "validate_network",
)

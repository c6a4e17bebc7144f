"""Binary networks: the layer definitions, the model file format, a numpy forward pass, and the
conversion to the chip's network program.

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
* ``dense_digital``: float32 ``weight`` (out, in), ``bias`` (out,): the logits.

Model file (``.npz``, read with ``allow_pickle=False``): one array per tensor, named
``<layer>.weight`` / ``<layer>.bias``, plus ``manifest.json``, a uint8 array holding the JSON
manifest: format and version, name, version, input feature spec (including the normalisation
constants), class names, the layer list (kind, name, stride, padding, pool, weight shape, integer
thresholds) and metrics such as the software test accuracy. See ``docs/model.md``.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from app.nn.features import FeatureSpec
from hardware.chip import BINARY_KINDS, LAYER_KINDS

if TYPE_CHECKING:
    from hardware.chip import NetworkProgram

MODEL_FORMAT = "cimcal-bnn"
MODEL_FORMAT_VERSION = 1
MANIFEST_KEY = "manifest.json"
# The layer vocabulary is the chip's: a model file holds exactly what the chip can execute.
WEIGHTED_DIGITAL_KINDS = ("conv_digital", "dense_digital")

# Bounds for uploaded models: generous for a KWS-sized BNN, small enough to refuse abuse.
MAX_MODEL_BYTES = 16 * 2**20
MAX_UNCOMPRESSED_BYTES = 64 * 2**20
MAX_LAYERS = 64
MAX_ARRAY_ELEMENTS = 4 * 2**20
MAX_ACTIVATION_ELEMENTS = 2**20  # per clip, any layer
MAX_CLASSES = 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class ModelFormatError(ValueError):
    """A model file is malformed, inconsistent or outside the accepted bounds."""


# -------------------------------------------------------------------------------------- definition
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
    """A binary neural network with its input spec and metadata.

    Input: features float32 (N, 1, n_mels, n_frames) as :func:`app.nn.kws_data.load_kws` returns
    them (normalised with ``feature_spec``); output logits float32 (N, len(class_names)).
    """

    name: str
    version: str
    layers: tuple[Layer, ...]
    class_names: tuple[str, ...]
    feature_spec: FeatureSpec = field(default_factory=FeatureSpec)
    metrics: Mapping[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.feature_spec.input_shape

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
    """Reference forward pass, no hardware: features float32 (N, 1, n_mels, n_frames) -> logits
    float32 (N, n_classes). Binary layers use exact integer bit-line sums (no ADC clipping)."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 4 or tuple(x.shape[1:]) != net.input_shape:
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


# ------------------------------------------------------------------------------------ file format
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
    """The JSON manifest of a network (what :func:`save_model` stores next to the arrays)."""
    return {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "name": net.name,
        "version": net.version,
        "input": {"shape": list(net.input_shape), "feature_spec": net.feature_spec.as_dict()},
        "class_names": list(net.class_names),
        "layers": [_layer_manifest(layer) for layer in net.layers],
        "metrics": dict(net.metrics),
    }


def model_bytes(net: BinaryNetwork) -> bytes:
    """The model file's bytes (deterministic for a given network)."""
    validate_network(net)
    manifest = json.dumps(model_manifest(net), sort_keys=True, indent=1).encode()
    arrays: dict[str, NDArray[Any]] = {MANIFEST_KEY: np.frombuffer(manifest, dtype=np.uint8)}
    for layer in net.layers:
        if layer.weight is not None:
            dtype = np.int8 if layer.is_binary else np.float32
            arrays[f"{layer.name}.weight"] = np.ascontiguousarray(layer.weight, dtype=dtype)
        if layer.bias is not None:
            arrays[f"{layer.name}.bias"] = np.ascontiguousarray(layer.bias, dtype=np.float32)
    buf = io.BytesIO()
    # zip entries carry a timestamp; write them ourselves with a fixed one so bytes are reproducible
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def save_model(net: BinaryNetwork, path: Path | str) -> Path:
    """Write ``net`` to ``path`` (a ``.npz``); returns the path."""
    path = Path(path)
    path.write_bytes(model_bytes(net))
    return path


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
    """Parse and strictly validate a model file's bytes; raises :class:`ModelFormatError`.

    Checks: size bounds, a numpy ``.npz`` without pickles, a manifest of the known format, layer
    kinds, shapes that chain from the input to ``len(class_names)`` logits, binary weights in
    {-1,+1}, integer thresholds, finite float parameters, and no unexpected arrays.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ModelFormatError("model data must be bytes")
    data = bytes(data)
    if len(data) > MAX_MODEL_BYTES:
        raise ModelFormatError(f"model is {len(data)} bytes; the limit is {MAX_MODEL_BYTES}")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ModelFormatError(f"not a model file (.npz archive): {e}") from e
    if sum(i.file_size for i in infos) > MAX_UNCOMPRESSED_BYTES:
        raise ModelFormatError(f"model arrays exceed {MAX_UNCOMPRESSED_BYTES} bytes uncompressed")
    arrays: dict[str, NDArray[Any]] = {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            for key in z.files:
                arrays[key] = np.asarray(z[key])
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError) as e:
        raise ModelFormatError(f"model archive is unreadable or corrupted: {e}") from e
    if MANIFEST_KEY not in arrays:
        raise ModelFormatError(f"model archive has no {MANIFEST_KEY}")
    raw = arrays.pop(MANIFEST_KEY)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ModelFormatError(f"{MANIFEST_KEY} must be a 1-D uint8 array")
    try:
        manifest = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelFormatError(f"{MANIFEST_KEY} is not valid JSON: {e}") from e
    net = _network_from_manifest(manifest, arrays)
    validate_network(net)
    return net


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


_MANIFEST_LAYER_KEYS: dict[str, set[str]] = {
    "conv_digital": {"kind", "name", "stride", "padding", "weight_shape"},
    "conv_binary": {"kind", "name", "stride", "padding", "pool", "weight_shape", "threshold"},
    "maxpool": {"kind", "name", "pool"},
    "avgpool_global": {"kind", "name"},
    "flatten": {"kind", "name"},
    "dense_binary": {"kind", "name", "weight_shape", "threshold"},
    "dense_digital": {"kind", "name", "weight_shape"},
}


def _network_from_manifest(manifest: Any, arrays: dict[str, NDArray[Any]]) -> BinaryNetwork:
    if not isinstance(manifest, dict):
        raise ModelFormatError("manifest must be a JSON object")
    if manifest.get("format") != MODEL_FORMAT:
        raise ModelFormatError(f"not a {MODEL_FORMAT} model (format {manifest.get('format')!r})")
    if manifest.get("format_version") != MODEL_FORMAT_VERSION:
        raise ModelFormatError(
            f"unsupported model format version {manifest.get('format_version')!r} (reads {MODEL_FORMAT_VERSION})"
        )
    name = _req(manifest, "name", str, "manifest")
    version = _req(manifest, "version", str, "manifest")
    inp = _req(manifest, "input", dict, "manifest")
    spec_d = _req(inp, "feature_spec", dict, "manifest.input")
    try:
        spec = FeatureSpec.from_dict(spec_d)
    except TypeError as e:
        raise ModelFormatError(f"manifest.input.feature_spec is invalid: {e}") from e
    if list(spec.input_shape) != inp.get("shape"):
        raise ModelFormatError(
            f"manifest.input.shape {inp.get('shape')!r} != feature spec {list(spec.input_shape)}"
        )
    class_names = _req(manifest, "class_names", list, "manifest")
    if not all(isinstance(c, str) for c in class_names):
        raise ModelFormatError("manifest.class_names must be strings")
    metrics = manifest.get("metrics", {})
    if not isinstance(metrics, dict):
        raise ModelFormatError("manifest.metrics must be an object")
    layer_list = _req(manifest, "layers", list, "manifest")
    if len(layer_list) > MAX_LAYERS:
        raise ModelFormatError(f"{len(layer_list)} layers; the limit is {MAX_LAYERS}")
    layers = []
    used: set[str] = set()
    for i, ld in enumerate(layer_list):
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
        layers.append(
            Layer(
                kind=kind,
                name=lname,
                weight=weight,
                bias=bias,
                threshold=threshold,
                stride=_pair(ld.get("stride"), f"{where}.stride", 1) if conv else (1, 1),
                padding=_pair(ld.get("padding"), f"{where}.padding", 0) if conv else (0, 0),
                pool=_pair(ld.get("pool"), f"{where}.pool", 1)
                if kind in ("conv_binary", "maxpool")
                else (1, 1),
            )
        )
    extra = sorted(set(arrays) - used)
    if extra:
        raise ModelFormatError(f"model archive has unexpected arrays {extra}")
    return BinaryNetwork(name, version, tuple(layers), tuple(class_names), spec, metrics)


def validate_network(net: BinaryNetwork) -> None:
    """Check a network's consistency and bounds; raises :class:`ModelFormatError`.

    Shapes must chain from ``input_shape`` to ``len(class_names)`` logits through the layers.
    """
    if not _NAME_RE.match(net.name) or not _NAME_RE.match(net.version):
        raise ModelFormatError("name and version must be 1-64 characters of [A-Za-z0-9_.-]")
    if not 2 <= len(net.class_names) <= MAX_CLASSES or len(set(net.class_names)) != len(net.class_names):
        raise ModelFormatError(f"need 2..{MAX_CLASSES} distinct class names")
    if any(not 1 <= len(c) <= 64 for c in net.class_names):
        raise ModelFormatError("class names must be 1-64 characters")
    if not net.layers or len(net.layers) > MAX_LAYERS:
        raise ModelFormatError(f"need 1..{MAX_LAYERS} layers")
    names = [layer.name for layer in net.layers]
    if len(set(names)) != len(names) or not all(_NAME_RE.match(n) for n in names):
        raise ModelFormatError("layer names must be unique, 1-64 characters of [A-Za-z0-9_.-]")
    shape: tuple[int, ...] = net.input_shape
    for layer in net.layers:
        shape = _check_layer(layer, shape)
        if int(np.prod(shape)) > MAX_ACTIVATION_ELEMENTS or min(shape) < 1:
            raise ModelFormatError(f"layer {layer.name}: output shape {shape} is empty or too large")
    if net.layers[-1].kind != "dense_digital" or shape != (len(net.class_names),):
        raise ModelFormatError(f"the last layer must be dense_digital with {len(net.class_names)} outputs")


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


@dataclass(frozen=True)
class ChipAgreement:
    """How the ideal (variation-free) chip compares with :func:`forward_software`.

    ``agreement``: fraction of clips with the same predicted class; ``saturated_fraction``: per
    binary layer, the fraction of (position, column, row tile) partial sums outside the ADC range
    (clipped); ``chip_accuracy`` / ``software_accuracy`` when labels are given.
    """

    agreement: float
    saturated_fraction: Mapping[str, float]
    chip_accuracy: float | None = None
    software_accuracy: float | None = None


def ideal_chip_agreement(
    net: BinaryNetwork, features: NDArray[np.floating], labels: NDArray[np.integer] | None = None
) -> ChipAgreement:
    """Run ``net`` through ``hardware.chip.execute_network`` with the ideal readout of the default
    geometry and compare with the exact software pass; features (N, 1, n_mels, n_frames)."""
    from hardware.chip import ChipGeometry, ImageHeader, build_image, execute_network, ideal_readout

    geometry = ChipGeometry()
    image = build_image(to_program(net), geometry, ImageHeader("IDEAL", net.name, net.version, "", "ideal"))
    read = ideal_readout(image.macros, geometry)
    mats = image.macros.astype(np.float32)
    layer_of = {t.macro: t.layer for t in image.tiles}
    cols_of = {t.macro: t.n_cols for t in image.tiles}
    clipped: dict[str, int] = {}
    total: dict[str, int] = {}

    def counting_read(macro: int, inputs: NDArray[np.uint8]) -> NDArray[np.int16]:
        exact = (inputs.astype(np.float32) @ mats[macro])[:, : cols_of[macro]] / geometry.adc_lsb_mac
        name = layer_of[macro]
        out = np.rint(exact)
        clipped[name] = clipped.get(name, 0) + int(
            np.sum((out < geometry.code_min) | (out > geometry.code_max))
        )
        total[name] = total.get(name, 0) + exact.size
        return read(macro, inputs)

    x = np.asarray(features, dtype=np.float32)
    chip = np.concatenate(
        [execute_network(image, x[i : i + 128], counting_read) for i in range(0, len(x), 128)]
    )
    soft = forward_software(net, x)
    agreement = float(np.mean(chip.argmax(1) == soft.argmax(1)))
    sat = {name: clipped[name] / max(1, total[name]) for name in total}
    if labels is None:
        return ChipAgreement(agreement, sat)
    y = np.asarray(labels)
    return ChipAgreement(
        agreement, sat, float(np.mean(chip.argmax(1) == y)), float(np.mean(soft.argmax(1) == y))
    )


def reference_model_path() -> Path:
    """The committed, trained reference KWS model (``app/nn/reference/kws_bnn.npz``)."""
    return Path(__file__).with_name("reference") / "kws_bnn.npz"


def load_reference_model() -> BinaryNetwork:
    return load_model(reference_model_path())


__all__: Sequence[str] = (
    "BINARY_KINDS",
    "LAYER_KINDS",
    "BinaryNetwork",
    "ChipAgreement",
    "Layer",
    "ModelFormatError",
    "accuracy",
    "binary_sums",
    "forward_software",
    "ideal_chip_agreement",
    "load_model",
    "load_model_bytes",
    "load_reference_model",
    "model_bytes",
    "model_manifest",
    "predict",
    "reference_model_path",
    "save_model",
    "to_program",
    "validate_network",
)

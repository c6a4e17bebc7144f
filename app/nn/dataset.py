"""The dataset file format (``cimcal-dataset``, version 1): labelled network inputs for the
functional test or for a model's activation statistics.

One ``.npz`` (read with ``allow_pickle=False``): ``x`` float32 (N, *input_shape), ``y`` int64 (N,)
class indices into ``class_names``, and ``manifest.json`` (a uint8 array of JSON): ``format``,
``format_version``, ``name``, ``version``, ``class_names``, ``input_shape`` ((C, H, W) or (F,)),
``role`` (``calibration``, ``test``, ``train`` or ``validation``), ``provenance`` (an object of
short strings and numbers: where the data came from) and optional ``features`` (the front end that
made ``x``: ``{"kind": "log_mel", "feature_spec": {...}}``, or ``{"kind": "raw"}``, the default).
Validation is strict: sizes, dtypes, shapes, finite values, labels within the class list.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from app.nn.features import FeatureSpec
from app.nn.network import MAX_CLASSES, MAX_INPUT_DIM, NAME_RE
from app.nn.npz import read_npz, write_npz

DATASET_FORMAT = "cimcal-dataset"
DATASET_FORMAT_VERSION = 1
DATASET_ROLES = ("calibration", "test", "train", "validation")

MAX_DATASET_BYTES = 64 * 2**20
MAX_DATASET_UNCOMPRESSED_BYTES = 256 * 2**20
MAX_SAMPLES = 100_000
MAX_SAMPLE_ELEMENTS = 2**16
MAX_PROVENANCE_ITEMS = 32
MAX_PROVENANCE_TEXT = 512

_KEYS = {
    "format",
    "format_version",
    "name",
    "version",
    "class_names",
    "input_shape",
    "role",
    "provenance",
    "features",
}
_REQUIRED = _KEYS - {"features", "provenance"}


class DatasetFormatError(ValueError):
    """A dataset file is malformed, inconsistent or outside the accepted bounds."""


@dataclass(frozen=True)
class Dataset:
    """Labelled inputs: ``x`` float32 (N, *input_shape), ``y`` int64 (N,) indices into ``class_names``.

    ``feature_spec`` is the log-mel front end that made ``x`` (None for raw inputs).
    """

    name: str
    version: str
    role: str
    class_names: tuple[str, ...]
    x: NDArray[np.float32]
    y: NDArray[np.int64]
    provenance: Mapping[str, Any] = field(default_factory=dict)
    feature_spec: FeatureSpec | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.x.shape[1:])

    def manifest(self) -> dict[str, Any]:
        features: dict[str, Any] = {"kind": "raw"}
        if self.feature_spec is not None:
            features = {"kind": "log_mel", "feature_spec": self.feature_spec.as_dict()}
        return {
            "format": DATASET_FORMAT,
            "format_version": DATASET_FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "role": self.role,
            "class_names": list(self.class_names),
            "input_shape": list(self.input_shape),
            "provenance": dict(self.provenance),
            "features": features,
        }


def dataset_bytes(ds: Dataset) -> bytes:
    """The dataset file's bytes (deterministic for a given dataset)."""
    validate_dataset(ds)
    return write_npz(
        ds.manifest(),
        {"x": np.ascontiguousarray(ds.x, dtype=np.float32), "y": np.ascontiguousarray(ds.y, dtype=np.int64)},
        compress=False,
    )


def load_dataset_bytes(data: bytes) -> Dataset:
    """Parse and strictly validate a dataset file; raises :class:`DatasetFormatError`."""
    manifest, arrays = read_npz(
        data,
        max_bytes=MAX_DATASET_BYTES,
        max_uncompressed=MAX_DATASET_UNCOMPRESSED_BYTES,
        error=DatasetFormatError,
        what="dataset",
    )
    ds = _from_manifest(manifest, arrays)
    validate_dataset(ds)
    return ds


def _from_manifest(m: Any, arrays: dict[str, NDArray[Any]]) -> Dataset:
    if not isinstance(m, dict):
        raise DatasetFormatError("manifest must be a JSON object")
    if m.get("format") != DATASET_FORMAT:
        raise DatasetFormatError(f"not a {DATASET_FORMAT} file (format {m.get('format')!r})")
    fv = m.get("format_version")
    if isinstance(fv, bool) or fv != DATASET_FORMAT_VERSION:
        raise DatasetFormatError(
            f"unsupported dataset format version {fv!r} (reads {DATASET_FORMAT_VERSION})"
        )
    if set(m) - _KEYS or _REQUIRED - set(m):
        raise DatasetFormatError(
            f"manifest keys: missing {sorted(_REQUIRED - set(m))}, unexpected {sorted(set(m) - _KEYS)}"
        )
    for key in ("name", "version", "role"):
        if not isinstance(m[key], str):
            raise DatasetFormatError(f"manifest.{key} must be a string")
    names = m["class_names"]
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        raise DatasetFormatError("manifest.class_names must be a list of strings")
    shape = m["input_shape"]
    if not isinstance(shape, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape):
        raise DatasetFormatError("manifest.input_shape must be a list of integers")
    provenance = m.get("provenance", {})
    spec = _features(m.get("features", {"kind": "raw"}))
    if set(arrays) != {"x", "y"}:
        raise DatasetFormatError(f"dataset arrays must be exactly 'x' and 'y', got {sorted(arrays)}")
    x, y = arrays["x"], arrays["y"]
    if x.dtype != np.float32:
        raise DatasetFormatError(f"x must be float32, got {x.dtype}")
    if y.dtype != np.int64:
        raise DatasetFormatError(f"y must be int64 class indices, got {y.dtype}")
    if list(x.shape[1:]) != shape:
        raise DatasetFormatError(f"x has sample shape {list(x.shape[1:])}; the manifest says {shape}")
    return Dataset(m["name"], m["version"], m["role"], tuple(names), x, y, provenance, spec)


def _features(f: Any) -> FeatureSpec | None:
    if not isinstance(f, dict) or not isinstance(f.get("kind"), str):
        raise DatasetFormatError("manifest.features must be an object with a 'kind'")
    if f["kind"] == "raw" and set(f) == {"kind"}:
        return None
    if f["kind"] == "log_mel" and set(f) == {"kind", "feature_spec"}:
        try:
            return FeatureSpec.from_dict(f["feature_spec"])
        except (TypeError, ValueError) as e:
            raise DatasetFormatError(f"manifest.features.feature_spec is invalid: {e}") from e
    raise DatasetFormatError(
        "manifest.features must be {'kind': 'raw'} or {'kind': 'log_mel', 'feature_spec'}"
    )


def validate_dataset(ds: Dataset) -> None:
    """Check bounds and consistency; raises :class:`DatasetFormatError`."""
    if not NAME_RE.fullmatch(ds.name) or not NAME_RE.fullmatch(ds.version) or len(ds.version) > 32:
        raise DatasetFormatError("name (1-64) and version (1-32) must be characters of [A-Za-z0-9_.-]")
    if ds.role not in DATASET_ROLES:
        raise DatasetFormatError(f"role must be one of {list(DATASET_ROLES)}, got {ds.role!r}")
    names = ds.class_names
    if not 2 <= len(names) <= MAX_CLASSES or len(set(names)) != len(names):
        raise DatasetFormatError(f"need 2..{MAX_CLASSES} distinct class names")
    if any(not 1 <= len(c) <= 64 or "\x00" in c for c in names):
        raise DatasetFormatError("class names must be 1-64 characters")
    x, y = ds.x, ds.y
    if x.dtype != np.float32 or y.dtype != np.int64:
        raise DatasetFormatError("x must be float32 and y int64")
    shape = x.shape[1:]
    if len(shape) not in (1, 3) or not all(1 <= v <= MAX_INPUT_DIM for v in shape):
        raise DatasetFormatError(
            f"input shape must be (C, H, W) or (F,) with sizes 1..{MAX_INPUT_DIM}, got {list(shape)}"
        )
    if math.prod(shape) > MAX_SAMPLE_ELEMENTS:
        raise DatasetFormatError(
            f"a sample of {math.prod(shape)} values is over the limit of {MAX_SAMPLE_ELEMENTS}"
        )
    if not 1 <= x.shape[0] <= MAX_SAMPLES or y.shape != (x.shape[0],):
        raise DatasetFormatError(
            f"need 1..{MAX_SAMPLES} samples and one label per sample (x {x.shape}, y {y.shape})"
        )
    if not np.all(np.isfinite(x)):
        raise DatasetFormatError("x has non-finite values")
    if y.min() < 0 or y.max() >= len(names):
        raise DatasetFormatError(f"labels must be class indices in [0, {len(names) - 1}]")
    if ds.feature_spec is not None and ds.feature_spec.input_shape != tuple(shape):
        raise DatasetFormatError(
            f"x sample shape {list(shape)} != the log-mel front end's {list(ds.feature_spec.input_shape)}"
        )
    _check_provenance(ds.provenance)


def _check_provenance(p: Any) -> None:
    if not isinstance(p, Mapping) or len(p) > MAX_PROVENANCE_ITEMS:
        raise DatasetFormatError(f"provenance must be an object of at most {MAX_PROVENANCE_ITEMS} entries")
    for k, v in p.items():
        ok_value = (isinstance(v, str) and len(v) <= MAX_PROVENANCE_TEXT and "\x00" not in v) or (
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        )
        if not isinstance(k, str) or not 1 <= len(k) <= 64 or "\x00" in k or not ok_value:
            raise DatasetFormatError(
                f"provenance entry {k!r}: keys 1-64 characters, values strings of <= {MAX_PROVENANCE_TEXT} "
                "characters or finite numbers"
            )


__all__: Sequence[str] = (
    "DATASET_ROLES",
    "Dataset",
    "DatasetFormatError",
    "dataset_bytes",
    "load_dataset_bytes",
    "validate_dataset",
)

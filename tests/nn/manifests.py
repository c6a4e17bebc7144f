"""Small networks and datasets in the project's file formats, and a re-packer that edits a file's
manifest without validation (for the malformed-field tests)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import strategies as st
from numpy.typing import NDArray

from app.nn.dataset import Dataset
from app.nn.model import (
    BinaryNetwork,
    DatasetRefs,
    GradeLimit,
    Layer,
    PassLimits,
    Preprocessing,
    forward_software,
)

Manifest = dict[str, Any]

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)
"""Any JSON value (NaN and huge integers included), for fuzzing manifests."""


def flat_network(n_features: int = 20, n_classes: int = 4, seed: int = 0, **kw: Any) -> BinaryNetwork:
    """Input (F,) binarized at 0.5, one binary dense layer, a digital head."""
    rng = np.random.default_rng(seed)
    layers = (
        Layer(
            "dense_binary",
            "b0",
            weight=rng.choice(np.array([-1, 1], np.int8), size=(24, n_features)),
            threshold=rng.integers(-2, 3, size=24).astype(np.int32),
        ),
        Layer(
            "dense_digital",
            "out",
            weight=rng.normal(size=(n_classes, 24)).astype(np.float32),
            bias=np.zeros(n_classes, np.float32),
        ),
    )
    defaults: dict[str, Any] = {
        "input_shape": (n_features,),
        "preprocessing": Preprocessing("binarize", threshold=0.5),
        "datasets": DatasetRefs("flat-calib@1", "flat-test@1"),
        "pass_limits": PassLimits(
            "relative",
            (GradeLimit(1, "GOLD", 0.98), GradeLimit(2, "SILVER", 0.9), GradeLimit(5, "BRONZE", 0.5)),
        ),
    }
    defaults.update(kw)
    names = tuple(f"c{k}" for k in range(n_classes))
    return BinaryNetwork("flat", "1", layers, names, None, {"software_test_accuracy": 1.0}, **defaults)


def image_network(
    shape: tuple[int, int, int] = (1, 8, 8), n_classes: int = 5, seed: int = 0, **kw: Any
) -> BinaryNetwork:
    """Input (C, H, W): a digital conv with a step, two binary convs, global average, a digital head."""
    rng = np.random.default_rng(seed)

    def pm1(*s: int) -> NDArray[np.int8]:
        return rng.choice(np.array([-1, 1], np.int8), size=s)

    c = shape[0]
    layers = (
        Layer(
            "conv_digital",
            "c0",
            weight=rng.normal(size=(12, c, 3, 3)).astype(np.float32),
            bias=rng.normal(size=12).astype(np.float32) * 0.5,
            padding=(1, 1),
        ),
        Layer(
            "conv_binary", "b1", weight=pm1(24, 12, 3, 3), threshold=np.full(24, 2, np.int32), padding=(1, 1)
        ),
        Layer(
            "conv_binary",
            "b2",
            weight=pm1(24, 24, 3, 3),
            threshold=np.full(24, 4, np.int32),
            padding=(1, 1),
            pool=(2, 2),
        ),
        Layer("avgpool_global", "gap"),
        Layer(
            "dense_digital",
            "out",
            weight=rng.normal(size=(n_classes, 24)).astype(np.float32) * 3,
            bias=np.zeros(n_classes, np.float32),
        ),
    )
    defaults: dict[str, Any] = {
        "input_shape": shape,
        "preprocessing": Preprocessing("none"),
        "datasets": DatasetRefs("img-calib@1", "img-test@1"),
    }
    defaults.update(kw)
    names = tuple(f"k{k}" for k in range(n_classes))
    return BinaryNetwork("img", "1", layers, names, None, {}, **defaults)


def self_labelled(
    net: BinaryNetwork, n: int, name: str, role: str, seed: int, *, class_order: tuple[str, ...] | None = None
) -> Dataset:
    """Random inputs labelled with the network's own software predictions (ideal accuracy 100 %),
    with the labels expressed in ``class_order`` (a permutation of the model's classes)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n, *net.input_shape)).astype(np.float32)
    pred = forward_software(net, net.prep.apply(x)).argmax(1)
    order = class_order or net.class_names
    index = {c: i for i, c in enumerate(order)}
    y = np.array([index[net.class_names[p]] for p in pred], dtype=np.int64)
    name_, version = name.split("@")
    return Dataset(name_, version, role, tuple(order), x, y, {"source": "tests: self-labelled", "seed": seed})


def rewrite(data: bytes, edit: Callable[[Manifest], object]) -> bytes:
    """The file with its manifest edited, re-packed without validation."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    manifest = json.loads(arrays.pop("manifest.json").tobytes())
    edit(manifest)
    return repack(manifest, arrays)


def repack(manifest: Any, arrays: dict[str, NDArray[Any]]) -> bytes:
    buf = io.BytesIO()
    members = dict(arrays)
    members["manifest.json"] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
    np.savez(buf, allow_pickle=False, **members)
    return buf.getvalue()


def manifest_of(data: bytes) -> tuple[Manifest, dict[str, NDArray[Any]]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(arrays.pop("manifest.json").tobytes()), arrays

"""The dataset file format: exact round trip, strict refusal of every malformed field, fuzzing."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.nn.dataset import Dataset, DatasetFormatError, dataset_bytes, load_dataset_bytes
from app.nn.features import DEFAULT_SPEC
from tests.nn.manifests import JSON, Manifest, manifest_of, repack, rewrite


def good_dataset(**kw: Any) -> Dataset:
    rng = np.random.default_rng(0)
    d: dict[str, Any] = {
        "name": "set",
        "version": "1",
        "role": "test",
        "class_names": ("a", "b", "c"),
        "x": rng.normal(size=(30, 1, 4, 5)).astype(np.float32),
        "y": rng.integers(0, 3, size=30).astype(np.int64),
        "provenance": {"source": "tests", "seed": 0},
    }
    d.update(kw)
    return Dataset(**d)


def test_round_trip_is_exact_and_bytes_are_reproducible() -> None:
    ds = good_dataset()
    data = dataset_bytes(ds)
    back = load_dataset_bytes(data)
    assert (back.ref, back.role, back.class_names, back.input_shape) == (
        "set@1",
        "test",
        ("a", "b", "c"),
        (1, 4, 5),
    )
    np.testing.assert_array_equal(back.x, ds.x)
    np.testing.assert_array_equal(back.y, ds.y)
    assert back.provenance == {"source": "tests", "seed": 0} and back.feature_spec is None
    assert dataset_bytes(back) == data


def test_log_mel_front_end_is_kept() -> None:
    x = np.zeros((2, *DEFAULT_SPEC.input_shape), np.float32)
    ds = good_dataset(x=x, y=np.array([0, 1], np.int64), feature_spec=DEFAULT_SPEC)
    assert load_dataset_bytes(dataset_bytes(ds)).feature_spec == DEFAULT_SPEC
    with pytest.raises(DatasetFormatError, match="front end"):
        dataset_bytes(good_dataset(feature_spec=DEFAULT_SPEC))  # (1, 4, 5) samples are not 40 x 49 log-mels


def _set(path: tuple[Any, ...], value: Any) -> Callable[[Manifest], None]:
    def edit(m: Manifest) -> None:
        d: Any = m
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value

    return edit


def _drop(key: str) -> Callable[[Manifest], None]:
    return lambda m: m.pop(key)


MALFORMED_MANIFEST: dict[str, Callable[[Manifest], None]] = {
    "format": _set(("format",), "cimcal-bnn"),
    "format_version": _set(("format_version",), 2),
    "name missing": _drop("name"),
    "name with a slash": _set(("name",), "a/b"),
    "version null": _set(("version",), None),
    "role unknown": _set(("role",), "holdout"),
    "class_names a string": _set(("class_names",), "a,b,c"),
    "class_names too few": _set(("class_names",), ["a"]),
    "class_names duplicated": _set(("class_names",), ["a", "a", "b"]),
    "input_shape mismatch": _set(("input_shape",), [1, 5, 4]),
    "input_shape strings": _set(("input_shape",), ["1", "4", "5"]),
    "provenance a list": _set(("provenance",), ["x"]),
    "provenance nested": _set(("provenance",), {"a": {"b": 1}}),
    "provenance long text": _set(("provenance",), {"a": "x" * 600}),
    "features unknown kind": _set(("features",), {"kind": "mfcc"}),
    "features log_mel without spec": _set(("features",), {"kind": "log_mel"}),
    "features bad spec": _set(("features",), {"kind": "log_mel", "feature_spec": {"n_mels": None}}),
    "unknown key": _set(("split",), "test"),
}


@pytest.mark.parametrize("what", sorted(MALFORMED_MANIFEST))
def test_every_malformed_manifest_field_is_refused(what: str) -> None:
    with pytest.raises(DatasetFormatError):
        load_dataset_bytes(rewrite(dataset_bytes(good_dataset()), MALFORMED_MANIFEST[what]))


def _with_arrays(**arrays: Any) -> bytes:
    manifest, good = manifest_of(dataset_bytes(good_dataset()))
    good.update(arrays)
    return repack(manifest, {k: v for k, v in good.items() if v is not None})


@pytest.mark.parametrize(
    "what, data",
    [
        ("x float64", _with_arrays(x=np.zeros((30, 1, 4, 5)))),
        ("y int32", _with_arrays(y=np.zeros(30, np.int32))),
        ("y float", _with_arrays(y=np.zeros(30, np.float32))),
        ("NaN in x", _with_arrays(x=np.full((30, 1, 4, 5), np.nan, np.float32))),
        ("inf in x", _with_arrays(x=np.full((30, 1, 4, 5), np.inf, np.float32))),
        ("label out of range", _with_arrays(y=np.full(30, 3, np.int64))),
        ("negative label", _with_arrays(y=np.full(30, -1, np.int64))),
        ("fewer labels", _with_arrays(y=np.zeros(29, np.int64))),
        ("no samples", _with_arrays(x=np.zeros((0, 1, 4, 5), np.float32), y=np.zeros(0, np.int64))),
        ("missing y", _with_arrays(y=None)),
        ("extra array", _with_arrays(z=np.zeros(3))),
        (
            "2-D samples",
            repack(
                {**manifest_of(dataset_bytes(good_dataset()))[0], "input_shape": [4, 5]},
                {"x": np.zeros((30, 4, 5), np.float32), "y": np.zeros(30, np.int64)},
            ),
        ),
        ("not a zip", b"x" * 100),
        ("empty", b""),
    ],
)
def test_malformed_arrays_are_refused(what: str, data: bytes) -> None:
    with pytest.raises(DatasetFormatError):
        load_dataset_bytes(data)


def test_pickles_are_refused() -> None:
    manifest, arrays = manifest_of(dataset_bytes(good_dataset()))
    buf = io.BytesIO()
    members = {**arrays, "manifest.json": np.frombuffer(json.dumps(manifest).encode(), np.uint8)}
    members["y"] = np.array([{"evil": 1}] * 30, dtype=object)
    np.savez(buf, allow_pickle=True, **members)
    with pytest.raises(DatasetFormatError):
        load_dataset_bytes(buf.getvalue())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(sorted(good_dataset().manifest())), value=JSON, drop=st.booleans())
def test_fuzzed_manifests_load_or_fail_with_a_dataset_format_error(key: str, value: Any, drop: bool) -> None:
    manifest, arrays = manifest_of(dataset_bytes(good_dataset()))
    m = copy.deepcopy(manifest)
    if drop:
        del m[key]
    else:
        m[key] = value
    with contextlib.suppress(DatasetFormatError):
        load_dataset_bytes(repack(m, arrays))

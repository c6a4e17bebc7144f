"""Model format 2: any input shape, preprocessing, dataset references, pass limits, the {0,1}-input
proof for binary layers, format 1 compatibility, and strict refusal of every malformed field."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.nn.features import DEFAULT_SPEC
from app.nn.model import (
    GradeLimit,
    Layer,
    ModelFormatError,
    PassLimits,
    Preprocessing,
    forward_software,
    load_model_bytes,
    load_reference_model,
    model_bytes,
    reference_model_path,
)
from tests.nn.manifests import JSON, Manifest, flat_network, image_network, manifest_of, repack, rewrite


def test_format_1_files_keep_loading_as_log_mel_models_without_datasets() -> None:
    data = reference_model_path().read_bytes()
    assert manifest_of(data)[0]["format_version"] == 1
    net = load_model_bytes(data)
    assert net.prep.kind == "log_mel" and net.prep.feature_spec == DEFAULT_SPEC
    assert net.input_shape == (1, 40, 49) and net.datasets is None and net.pass_limits is None
    again = load_model_bytes(model_bytes(net))  # written as format 2, same network
    assert manifest_of(model_bytes(net))[0]["format_version"] == 2
    assert again.input_shape == net.input_shape and again.prep == net.prep
    x = np.random.default_rng(0).normal(size=(4, 1, 40, 49)).astype(np.float32)
    np.testing.assert_array_equal(forward_software(again, x), forward_software(net, x))


@pytest.mark.parametrize("make", [flat_network, image_network])
def test_format_2_round_trip_is_exact(make: Callable[..., Any]) -> None:
    net = make()
    data = model_bytes(net)
    back = load_model_bytes(data)
    assert back.input_shape == net.input_shape and back.prep == net.prep
    assert back.datasets == net.datasets and back.pass_limits == net.pass_limits
    assert back.class_names == net.class_names and model_bytes(back) == data


def test_flat_input_runs_with_binarize_preprocessing() -> None:
    net = flat_network()
    x = np.random.default_rng(1).uniform(size=(6, 20)).astype(np.float32)
    logits = forward_software(net, net.prep.apply(x))
    assert logits.shape == (6, 4)
    np.testing.assert_array_equal(net.prep.apply(x), (x >= 0.5).astype(np.float32))


def test_binary_layers_must_receive_binary_inputs() -> None:
    flat = flat_network()
    with pytest.raises(
        ModelFormatError, match=r"b0 \(dense_binary\) receives non-binary inputs from the 'none'"
    ):
        model_bytes(replace(flat, preprocessing=Preprocessing("none")))
    img = image_network()
    layers = list(img.layers)
    # a binary dense layer behind the global average pool (reals in [0, 1])
    bad = (
        *layers[:4],
        Layer("dense_binary", "bd", weight=np.ones((8, 24), np.int8), threshold=np.zeros(8, np.int32)),
        replace(layers[4], weight=np.zeros((5, 8), np.float32)),
    )
    with pytest.raises(
        ModelFormatError, match=r"receives non-binary inputs from layer gap \(avgpool_global\)"
    ):
        model_bytes(replace(img, layers=bad))
    # a binary convolution straight on raw pixels
    first_binary = (
        Layer(
            "conv_binary",
            "b0",
            weight=np.ones((12, 1, 3, 3), np.int8),
            threshold=np.zeros(12, np.int32),
            padding=(1, 1),
        ),
        *layers[1:],
    )
    with pytest.raises(ModelFormatError, match="non-binary inputs"):
        model_bytes(replace(img, layers=first_binary))
    # max-pool and flatten keep the {0,1} domain of the step before them
    ok = (
        layers[0],
        Layer("maxpool", "p", pool=(2, 2)),
        Layer("flatten", "f"),
        Layer("dense_binary", "bd", weight=np.ones((8, 192), np.int8), threshold=np.zeros(8, np.int32)),
        replace(layers[4], weight=np.zeros((5, 8), np.float32)),
    )
    model_bytes(replace(img, layers=ok))


def test_relative_pass_limits_resolve_against_the_ideal_accuracy() -> None:
    limits = PassLimits("relative", (GradeLimit(1, "GOLD", 0.98), GradeLimit(2, "SILVER", 0.9)))
    assert [g.min_accuracy for g in limits.resolve(0.75)] == [0.735, 0.675]
    with pytest.raises(ModelFormatError):
        limits.resolve(None)
    absolute = PassLimits("absolute", (GradeLimit(1, "A", 0.6),))
    assert absolute.resolve(None) == absolute.grades


def _set(path: tuple[Any, ...], value: Any) -> Callable[[Manifest], None]:
    def edit(m: Manifest) -> None:
        d: Any = m
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value

    return edit


def _drop(path: tuple[Any, ...]) -> Callable[[Manifest], None]:
    def edit(m: Manifest) -> None:
        d: Any = m
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]

    return edit


FS = ("input", "preprocessing", "feature_spec")
GRADES = ("pass_limits", "grades")

# Every field of the format-2 manifest, malformed one way or another.
MALFORMED: dict[str, Callable[[Manifest], None]] = {
    "format_version string": _set(("format_version",), "2"),
    "format_version bool": _set(("format_version",), True),
    "unknown top-level key": _set(("extra",), 1),
    "name missing": _drop(("name",)),
    "name with a space": _set(("name",), "a b"),
    "name ending in a newline": _set(("name",), "abc\n"),
    "version int": _set(("version",), 1),
    "version too long": _set(("version",), "v" * 33),
    "input not an object": _set(("input",), [1, 40, 49]),
    "input shape 2-D": _set(("input", "shape"), [40, 49]),
    "input shape strings": _set(("input", "shape"), ["1", "40", "49"]),
    "input shape zero": _set(("input", "shape"), [0, 40, 49]),
    "input shape mismatch": _set(("input", "shape"), [1, 40, 48]),
    "input unknown key": _set(("input", "feature_spec"), {}),
    "preprocessing missing": _drop(("input", "preprocessing")),
    "preprocessing kind unknown": _set(("input", "preprocessing", "kind"), "mfcc"),
    "preprocessing kind null": _set(("input", "preprocessing", "kind"), None),
    "hop_samples 0": _set((*FS, "hop_samples"), 0),
    "n_mels null": _set((*FS, "n_mels"), None),
    "n_mels string": _set((*FS, "n_mels"), "40"),
    "n_mels float": _set((*FS, "n_mels"), 40.0),
    "n_mels huge": _set((*FS, "n_mels"), 10**9),
    "norm_std 0": _set((*FS, "norm_std"), 0),
    "norm_mean NaN": _set((*FS, "norm_mean"), float("nan")),
    "fmax above Nyquist": _set((*FS, "fmax_hz"), 9000.0),
    "feature_spec key missing": _drop((*FS, "n_fft")),
    "feature_spec unknown key": _set((*FS, "dither"), 0.1),
    "feature_spec a string": _set(FS, "log-mel"),
    "class_names not a list": _set(("class_names",), "yes,no"),
    "class_names duplicated": _set(("class_names",), ["a"] * 12),
    "class_names with an int": _set(("class_names",), [1] * 12),
    "class name empty": _set(("class_names", 0), ""),
    "datasets not an object": _set(("datasets",), "kws-calib@1"),
    "datasets ref without version": _set(("datasets", "test"), "kws-test"),
    "datasets ref ending in a newline": _set(("datasets", "test"), "kws-test@1\n"),
    "datasets ref int": _set(("datasets", "calibration"), 3),
    "datasets missing test": _drop(("datasets", "test")),
    "datasets unknown role": _set(("datasets", "train"), "x@1"),
    "pass_limits mode unknown": _set(("pass_limits", "mode"), "percentile"),
    "pass_limits no grades": _set(GRADES, []),
    "pass_limits grades not a list": _set(GRADES, {}),
    "grade soft_bin 0": _set((*GRADES, 0, "soft_bin"), 0),
    "grade soft_bin 10": _set((*GRADES, 0, "soft_bin"), 10),
    "grade soft_bin bool": _set((*GRADES, 0, "soft_bin"), True),
    "grade soft_bins not increasing": _set((*GRADES, 1, "soft_bin"), 1),
    "grade label lowercase": _set((*GRADES, 0, "label"), "gold"),
    "grade label ending in a newline": _set((*GRADES, 0, "label"), "GOLD\n"),
    "grade label missing": _drop((*GRADES, 0, "label")),
    "grade min_accuracy above 1": _set((*GRADES, 0, "min_accuracy"), 1.5),
    "grade min_accuracy 0": _set((*GRADES, 1, "min_accuracy"), 0),
    "grade min_accuracy string": _set((*GRADES, 0, "min_accuracy"), "0.9"),
    "grade limits not falling": _set((*GRADES, 1, "min_accuracy"), 0.99),
    "grade unknown key": _set((*GRADES, 0, "hard_bin"), 1),
    "layer stride 0": _set(("layers", 0, "stride"), [0, 1]),
    "layer padding negative": _set(("layers", 0, "padding"), [-1, 1]),
    "layer thresholds floats": _set(("layers", 1, "threshold"), [0.5] * 16),
    "layer unknown key": _set(("layers", 0, "dilation"), [1, 1]),
    "metrics a list": _set(("metrics",), []),
}


def good_log_mel_v2() -> bytes:
    ref = load_reference_model()
    small = image_network(shape=(1, 40, 49), n_classes=12)
    net = replace(
        small,
        class_names=ref.class_names,
        layers=(
            replace(small.layers[0], stride=(2, 2)),
            *small.layers[1:-1],
            replace(small.layers[-1], weight=np.zeros((12, 24), np.float32), bias=np.zeros(12, np.float32)),
        ),
        input_shape=ref.input_shape,
        preprocessing=ref.prep,
        feature_spec=None,
        pass_limits=PassLimits("absolute", (GradeLimit(1, "A", 0.9), GradeLimit(2, "B", 0.8))),
    )
    data = model_bytes(net)
    # the image network has 12/24/24 channels; the thresholds tested above edit layer 1
    m, _ = manifest_of(data)
    assert m["layers"][1]["kind"] == "conv_binary" and len(m["layers"][1]["threshold"]) == 24
    return rewrite(data, _set(("layers", 1, "threshold"), [0] * 24))


@pytest.fixture(scope="module")
def good_v2() -> bytes:
    data = good_log_mel_v2()
    load_model_bytes(data)
    return data


@pytest.mark.parametrize("what", sorted(MALFORMED))
def test_every_malformed_manifest_field_is_a_model_format_error(good_v2: bytes, what: str) -> None:
    bad = rewrite(good_v2, MALFORMED[what])
    with pytest.raises(ModelFormatError):
        load_model_bytes(bad)


def _paths(d: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(d, list) and len(d) <= 12:
        for i, v in enumerate(d):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_manifests_load_or_fail_with_a_model_format_error(good_v2: bytes, data: st.DataObject) -> None:
    manifest, arrays = manifest_of(good_v2)
    paths = _paths(manifest)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        m = copy.deepcopy(manifest)
        d: Any = m
        for k in path[:-1]:
            d = d[k]
        if data.draw(st.booleans()) and isinstance(d, dict):
            del d[path[-1]]
        else:
            d[path[-1]] = data.draw(JSON)
        manifest = m
        paths = _paths(manifest)
        if not paths:
            break
    with contextlib.suppress(ModelFormatError):
        load_model_bytes(repack(manifest, arrays))

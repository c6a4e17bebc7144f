"""Model file format, validation, numpy forward pass versus torch, chip program, reference model."""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from app.nn.kws_data import CLASS_NAMES
from app.nn.model import (
    BinaryNetwork,
    Layer,
    ModelFormatError,
    accuracy,
    forward_software,
    ideal_chip_agreement,
    load_model,
    load_model_bytes,
    model_bytes,
    predict,
    reference_model_path,
    save_model,
    to_program,
)
from app.nn.train import ArchConfig, KwsBnn, export_network, fold_binary_threshold
from tests.nn.conftest import tiny_split

SMALL_ARCH = ArchConfig(conv0_channels=8, conv0_pool=2, binary_channels=(16, 16, 16), binary_pools=(1, 2, 1))


def _random_model(seed: int, arch: ArchConfig = SMALL_ARCH) -> KwsBnn:
    """A torch model with random weights and batch-norm statistics, some gains negative or zero."""
    torch.manual_seed(seed)
    model = KwsBnn(arch, len(CLASS_NAMES))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, bn in enumerate([model.bn0, *model.bbns, model.head_bn]):
            n = bn.num_features
            k = (
                1.0
                if i == 0
                else float(model.bweights[i - 1][0].numel())
                if i <= len(model.bweights)
                else 1.0
            )
            bn.weight.copy_(torch.randn(n, generator=gen))
            bn.weight[0] = 0.0
            bn.bias.copy_(torch.randn(n, generator=gen) * 0.5)
            bn.running_mean.copy_(torch.randn(n, generator=gen) * math.sqrt(k) * 0.5)
            bn.running_var.copy_(torch.rand(n, generator=gen) * k + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def random_net() -> BinaryNetwork:
    return export_network(_random_model(0), CLASS_NAMES, name="random", version="0", metrics={"note": "test"})


def test_fold_binary_threshold_matches_batchnorm_step() -> None:
    rng = np.random.default_rng(0)
    w = rng.choice(np.array([-1, 1], np.int8), size=(6, 4, 3, 3))
    scale = np.array([0.7, -0.3, 0.0, 0.0, 2.0, -1.5])
    shift = np.array([1.3, 2.0, 0.5, -0.5, -7.0, -3.0])
    wf, thr = fold_binary_threshold(w, scale, shift)
    a = rng.integers(0, 2, size=(500, 36))
    s = a @ w.reshape(6, -1).T
    expected = scale * s + shift >= 0
    got = a @ wf.reshape(6, -1).T >= thr
    np.testing.assert_array_equal(got, expected)
    assert set(np.unique(wf)) <= {-1, 1}


def test_forward_software_agrees_with_torch_eval(random_net: BinaryNetwork) -> None:
    x = np.random.default_rng(1).normal(size=(64, 1, 40, 49)).astype(np.float32)
    model = _random_model(0)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x)).numpy()
    logits = forward_software(random_net, x)
    assert logits.shape == (64, len(CLASS_NAMES))
    # float rounding at a step can flip a bit now and then; predictions must agree almost always
    assert np.mean(logits.argmax(1) == torch_logits.argmax(1)) >= 0.95
    assert np.median(np.abs(logits - torch_logits)) < 1e-4


def test_save_load_round_trip_is_exact(random_net: BinaryNetwork, tmp_path: Path) -> None:
    path = save_model(random_net, tmp_path / "m.npz")
    back = load_model(path)
    assert back.name == "random" and back.version == "0" and back.class_names == CLASS_NAMES
    assert back.metrics == {"note": "test"} and back.feature_spec == random_net.feature_spec
    for a, b in zip(random_net.layers, back.layers, strict=True):
        assert (a.kind, a.name, a.stride, a.padding, a.pool) == (b.kind, b.name, b.stride, b.padding, b.pool)
        for attr in ("weight", "bias", "threshold"):
            va, vb = getattr(a, attr), getattr(b, attr)
            assert (va is None) == (vb is None)
            if va is not None:
                np.testing.assert_array_equal(va, vb)
    assert model_bytes(back) == model_bytes(random_net)  # deterministic bytes
    x = np.random.default_rng(2).normal(size=(8, 1, 40, 49)).astype(np.float32)
    np.testing.assert_array_equal(forward_software(back, x), forward_software(random_net, x))


Manifest = dict[str, Any]
Arrays = dict[str, NDArray[Any]]


def _rewrite(
    data: bytes,
    edit_manifest: Callable[[Manifest], object] | None = None,
    edit_arrays: Callable[[Arrays], object] | None = None,
) -> bytes:
    """The model with its manifest and/or arrays edited, re-packed without validation."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    manifest = json.loads(arrays.pop("manifest.json").tobytes())
    if edit_manifest:
        edit_manifest(manifest)
    if edit_arrays:
        edit_arrays(arrays)
    buf = io.BytesIO()
    arrays["manifest.json"] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def _set(d: Manifest, key: str, value: object) -> None:
    d[key] = value


def _bad_models(good: bytes) -> dict[str, bytes]:
    def zero_weight(a: Arrays) -> None:
        a["bconv1.weight"] = a["bconv1.weight"].copy()
        a["bconv1.weight"][0, 0, 0, 0] = 0

    with np.load(io.BytesIO(good), allow_pickle=False) as z:
        kinds = [layer["kind"] for layer in json.loads(z["manifest.json"].tobytes())["layers"]]
    b = kinds.index("conv_binary")
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    return {
        "empty": b"",
        "not a zip": b"hello world" * 10,
        "truncated": good[: len(good) // 2],
        "bit flip": bytes(flipped),
        "too large": good + b"\0" * (17 * 2**20),
        "zero in binary weights": _rewrite(good, edit_arrays=zero_weight),
        "float thresholds": _rewrite(good, lambda m: _set(m["layers"][b], "threshold", [0.5] * 16)),
        "threshold count": _rewrite(good, lambda m: _set(m["layers"][b], "threshold", [0] * 15)),
        "threshold on a pool": _rewrite(good, lambda m: _set(m["layers"][1], "threshold", [0] * 8)),
        "shape mismatch": _rewrite(
            good, edit_arrays=lambda a: a.update({"bconv2.weight": a["bconv2.weight"][:, :8]})
        ),
        "missing array": _rewrite(good, edit_arrays=lambda a: a.pop("fc.bias")),
        "extra array": _rewrite(good, edit_arrays=lambda a: a.update({"junk": np.zeros(3)})),
        "nan weight": _rewrite(
            good, edit_arrays=lambda a: a.update({"fc.weight": np.full_like(a["fc.weight"], np.nan)})
        ),
        "unknown kind": _rewrite(good, lambda m: _set(m["layers"][b], "kind", "conv_ternary")),
        "format version": _rewrite(good, lambda m: _set(m, "format_version", 99)),
        "class count": _rewrite(good, lambda m: _set(m, "class_names", ["a", "b"])),
        "bad stride": _rewrite(good, lambda m: _set(m["layers"][0], "stride", [0, 1])),
        "no manifest": _no_manifest(good),
    }


def _no_manifest(good: bytes) -> bytes:
    buf = io.BytesIO()
    with np.load(io.BytesIO(good), allow_pickle=False) as z:
        np.savez(buf, **{k: z[k] for k in z.files if k != "manifest.json"})
    return buf.getvalue()


def test_invalid_models_are_rejected(random_net: BinaryNetwork) -> None:
    good = model_bytes(random_net)
    load_model_bytes(good)
    for what, data in _bad_models(good).items():
        with pytest.raises(ModelFormatError):
            load_model_bytes(data)
            pytest.fail(f"accepted a model with: {what}")


def test_pickled_arrays_are_refused(random_net: BinaryNetwork) -> None:
    good = model_bytes(random_net)
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        obj = io.BytesIO()
        np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        dst.writestr("evil.npy", obj.getvalue())
    with pytest.raises(ModelFormatError):
        load_model_bytes(buf.getvalue())


def test_construction_errors_are_model_format_errors(random_net: BinaryNetwork) -> None:
    layers = list(random_net.layers)
    i = next(i for i, layer in enumerate(layers) if layer.kind == "conv_binary")
    w = layers[i].weight
    assert w is not None
    for bad in (
        replace(layers[i], weight=np.zeros_like(w)),
        replace(layers[i], threshold=None),
        replace(layers[i], weight=w[:, :-1]),
        replace(layers[i + 1], kind="dense_binary"),
    ):
        with pytest.raises(ModelFormatError):
            model_bytes(replace(random_net, layers=(*layers[:i], bad, *layers[i + 1 :])))
    with pytest.raises(ModelFormatError):
        model_bytes(
            replace(
                random_net,
                layers=(*layers[:1], replace(layers[1], threshold=np.zeros(3, np.int32)), *layers[2:]),
            )
        )
    with pytest.raises(ModelFormatError):
        model_bytes(replace(random_net, layers=(Layer("flatten", "f"),)))


def test_program_matches_network_and_fits_the_chip(random_net: BinaryNetwork) -> None:
    from hardware.chip import ChipGeometry, ImageHeader, build_image, execute_network, ideal_readout

    prog = to_program(random_net)
    assert prog.input_shape == (1, 40, 49) and prog.class_names == CLASS_NAMES
    assert [layer.kind for layer in prog.layers] == [layer.kind for layer in random_net.layers]
    # a 9-bit ADC holds every partial sum of these small layers (|sum| <= 144), so the ideal chip
    # must reproduce the software pass exactly: this checks the mapping, not the ADC
    g = ChipGeometry(adc_bits=9)
    image = build_image(prog, g, ImageHeader("TEST", "random", "0", "", "0"))
    assert len(image.tiles) == random_net.macros_needed(g.rows, g.cols)
    x = np.random.default_rng(3).normal(size=(32, 1, 40, 49)).astype(np.float32)
    chip = execute_network(image, x, ideal_readout(image.macros, g))
    np.testing.assert_allclose(chip, forward_software(random_net, x), atol=1e-4)


# ------------------------------------------------------------------------------ the reference model
def test_reference_model_is_small_and_fits_the_chip() -> None:
    path = reference_model_path()
    assert path.exists(), "the trained reference model is committed in app/nn/reference/"
    assert path.stat().st_size < 1_000_000
    net = load_model(path)
    assert net.class_names == CLASS_NAMES
    assert len(net.binary_layers()) >= 3
    assert net.macros_needed(256, 64) <= 32
    assert net.layers[0].kind == "conv_digital" and net.layers[-1].kind == "dense_digital"
    assert 0.8 < net.metrics["software_test_accuracy"] <= 1.0


def test_reference_model_reaches_stated_accuracy_on_held_out_speakers(tmp_path: Path) -> None:
    """Fresh clips of the reference dataset's test speakers (seed 0: same speaker split)."""
    from app.nn.kws_data import load_kws

    net = load_model(reference_model_path())
    x, y, names = load_kws(
        "test", tmp_path, seed=0, clips_per_class={"train": 1, "val": 1, "test": 25}, progress=False
    )
    assert names == net.class_names
    acc = accuracy(net, x, y)
    stated = float(net.metrics["software_test_accuracy"])
    # 300 clips: the standard error is ~2 points; allow 4 standard errors
    assert acc >= stated - 0.08, f"{acc:.3f} vs stated {stated:.3f}"
    assert predict(net, x[:5]).shape == (5,)
    # the default chip (6-bit ADC, partial sums clipped to +-32 codes) agrees with the exact pass
    chip = ideal_chip_agreement(net, x[:120], y[:120])
    assert chip.agreement >= 0.97
    assert set(chip.saturated_fraction) == {layer.name for layer in net.binary_layers()}
    assert max(chip.saturated_fraction.values()) < 0.02


def test_tiny_training_run_exports_a_consistent_network(tiny_cache: Path) -> None:
    from app.nn.train import TrainConfig, train_model

    tr, va = tiny_split(tiny_cache, "train"), tiny_split(tiny_cache, "val")
    model, net, history = train_model(
        (tr.features, tr.labels),
        (va.features, va.labels),
        TrainConfig(epochs=1, arch=SMALL_ARCH),
        log=lambda _: None,
    )
    assert len(history) == 1 and 0.0 <= history[0]["val_acc"] <= 1.0
    with torch.no_grad():
        t = model(torch.from_numpy(va.features)).numpy().argmax(1)
    assert np.mean(predict(net, va.features) == t) >= 0.95

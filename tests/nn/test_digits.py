"""The digits task: its fixed split, its datasets, and the committed reference model digits-bnn@1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.nn.dataset import Dataset, dataset_bytes, load_dataset_bytes
from app.nn.digits import (
    CLASS_NAMES,
    DIGITS_CALIBRATION_REF,
    DIGITS_TEST_REF,
    digits_datasets,
    digits_reference_path,
    load_digits_arrays,
    split_indices,
)
from app.nn.ideal_chip import ideal_chip_agreement
from app.nn.model import load_model, model_bytes
from app.nn.network import BinaryNetwork, DatasetRefs, forward_software, predict, to_program
from app.nn.train_digits import (
    PASS_LIMITS,
    DigitsArch,
    DigitsTrainConfig,
    export_digits_network,
    train_digits_model,
)
from hardware.chip import ChipGeometry, map_network

# What docs/model.md states for the committed model (ideal chip on all 450 test images).
STATED_AGREEMENT = 1.0


@pytest.fixture(scope="module")
def datasets() -> dict[str, Dataset]:
    return digits_datasets()


@pytest.fixture(scope="module")
def reference() -> BinaryNetwork:
    return load_model(digits_reference_path())


def test_split_is_deterministic_disjoint_complete_and_stratified() -> None:
    _, y = load_digits_arrays()
    split = split_indices(y, seed=0)
    again = split_indices(y, seed=0)
    assert all(np.array_equal(split[s], again[s]) for s in split)
    assert not np.array_equal(split["test"], split_indices(y, seed=1)["test"])
    together = np.concatenate(list(split.values()))
    assert together.size == y.size == 1797 and np.unique(together).size == y.size
    assert {s: len(i) for s, i in split.items()} == {"train": 1078, "calibration": 269, "test": 450}
    for c in range(10):
        n = int(np.sum(y == c))
        counts = [int(np.sum(y[split[s]] == c)) for s in ("train", "calibration", "test")]
        assert counts[:2] == [round(0.60 * n), round(0.15 * n)] and sum(counts) == n


def test_datasets_have_fixed_refs_and_round_trip_byte_identically(datasets: dict[str, Dataset]) -> None:
    assert datasets["calibration"].ref == DIGITS_CALIBRATION_REF == "digits-calib@1"
    assert datasets["test"].ref == DIGITS_TEST_REF == "digits-test@1"
    assert datasets["train"].ref == "digits-train@1"
    again = digits_datasets()
    for role, ds in datasets.items():
        assert ds.role == role and ds.class_names == CLASS_NAMES and ds.input_shape == (1, 8, 8)
        assert ds.x.dtype == np.float32 and ds.x.min() >= 0.0 and ds.x.max() == 1.0
        assert ds.provenance["source"] == "sklearn.datasets.load_digits" and ds.provenance["split_seed"] == 0
        data = dataset_bytes(ds)
        back = load_dataset_bytes(data)
        assert dataset_bytes(back) == data == dataset_bytes(again[role])
        assert back.ref == ds.ref and np.array_equal(back.x, ds.x) and np.array_equal(back.y, ds.y)
    other = digits_datasets(seed=3)["test"]
    assert (
        other.ref == "digits-test@1-seed3"
        and other.provenance["indices_sha256"] != datasets["test"].provenance["indices_sha256"]
    )


def test_reference_model_file_declares_input_datasets_and_limits(reference: BinaryNetwork) -> None:
    assert (reference.name, reference.version) == ("digits-bnn", "1")
    assert reference.input_shape == (1, 8, 8) and reference.prep.kind == "none"
    assert reference.class_names == CLASS_NAMES
    assert reference.datasets == DatasetRefs("digits-calib@1", "digits-test@1")
    assert reference.pass_limits == PASS_LIMITS and PASS_LIMITS.mode == "relative"
    assert [g.min_accuracy for g in PASS_LIMITS.grades] == [0.97, 0.94, 0.90, 0.85]
    tiles = map_network(to_program(reference), ChipGeometry())
    assert len({t.macro for t in tiles}) == reference.macros_needed() == 4


def test_reference_model_reaches_its_stated_accuracy(
    reference: BinaryNetwork, datasets: dict[str, Dataset]
) -> None:
    test = datasets["test"]
    m = reference.metrics
    assert m["split"]["test_indices_sha256"] == test.provenance["indices_sha256"]
    pred = predict(reference, test.x)
    acc = float(np.mean(pred == test.y))
    assert round(acc, 4) == m["software_test_accuracy"] and acc >= 0.95
    for i, c in enumerate(CLASS_NAMES):
        assert round(float(np.mean(pred[test.y == i] == i)), 4) == m["test_per_class_accuracy"][c]


def test_reference_model_agrees_with_the_ideal_chip(
    reference: BinaryNetwork, datasets: dict[str, Dataset]
) -> None:
    test = datasets["test"]
    r = ideal_chip_agreement(reference, test.x, test.y)
    assert (
        r.agreement >= STATED_AGREEMENT
        and round(r.agreement, 4) == reference.metrics["ideal_chip"]["agreement"]
    )
    assert (
        r.chip_accuracy is not None
        and round(r.chip_accuracy, 4) == reference.metrics["ideal_chip"]["chip_accuracy"]
    )
    assert max(r.saturated_fraction.values()) < 1e-3


def test_training_is_deterministic_and_exports_what_torch_computes(datasets: dict[str, Dataset]) -> None:
    small = DigitsTrainConfig(epochs=2, arch=DigitsArch(conv0_channels=8, binary_channels=(16, 16)))
    refs = DatasetRefs(DIGITS_CALIBRATION_REF, DIGITS_TEST_REF)
    held_out = datasets["calibration"]
    model, net, history = train_digits_model(datasets["train"], held_out, small, refs, log=lambda _: None)
    _, net2, _ = train_digits_model(datasets["train"], held_out, small, refs, log=lambda _: None)
    assert model_bytes(net) == model_bytes(net2) and len(history) == 2
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(held_out.x)).numpy()
    np.testing.assert_allclose(forward_software(net, held_out.x), torch_logits, rtol=1e-4, atol=1e-4)
    assert model_bytes(export_digits_network(model, datasets=refs)) == model_bytes(net)

"""The second reference task: handwritten digits (the 8x8 images scikit-learn ships).

``sklearn.datasets.load_digits`` holds 1,797 real 8x8 images of the digits 0-9 (values 0..16,
bundled with scikit-learn, so nothing is downloaded). :func:`split_indices` splits them, per class
and by a seed, into train / calibration / test (60 / 15 / 25 %); :func:`digits_datasets` returns
them as :class:`~app.nn.dataset.Dataset` objects of input (1, 8, 8) float32 in [0, 1] (x / 16) and
classes ``"0"`` .. ``"9"``. The station registers the calibration and test sets of the default
seed under the fixed references :data:`DIGITS_CALIBRATION_REF` and :data:`DIGITS_TEST_REF`; the
reference model ``digits-bnn@1`` (:func:`digits_reference_path`) names them in its file.

Torch-free: the training lives in :mod:`app.nn.train_digits`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from app.nn.dataset import Dataset

DIGITS_MODEL_REF = "digits-bnn@1"
DIGITS_TRAIN_REF = "digits-train@1"
DIGITS_CALIBRATION_REF = "digits-calib@1"
DIGITS_TEST_REF = "digits-test@1"
DIGITS_REFERENCE_FILE = "digits_bnn.npz"

CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
INPUT_SHAPE = (1, 8, 8)
PIXEL_MAX = 16.0
DEFAULT_SPLIT_SEED = 0
# Fractions of every class, in split order; the test split takes what the others leave.
SPLIT_FRACTIONS: Mapping[str, float] = {"train": 0.60, "calibration": 0.15, "test": 0.25}
SPLIT_NAMES: Mapping[str, str] = {
    "train": DIGITS_TRAIN_REF,
    "calibration": DIGITS_CALIBRATION_REF,
    "test": DIGITS_TEST_REF,
}
SOURCE = "sklearn.datasets.load_digits"


def digits_reference_path() -> Path:
    """The committed, trained reference digits model (``app/nn/reference/digits_bnn.npz``)."""
    return Path(__file__).with_name("reference") / DIGITS_REFERENCE_FILE


def load_digits_arrays() -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """All 1,797 images as network inputs (N, 1, 8, 8) float32 in [0, 1] and labels (N,) int64."""
    # Imported here: scikit-learn takes a second to import and only this function needs it.
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (np.asarray(d.images, dtype=np.float64) / PIXEL_MAX).astype(np.float32)[:, None, :, :]
    return x, np.asarray(d.target, dtype=np.int64)


def split_indices(
    labels: NDArray[np.integer], seed: int = DEFAULT_SPLIT_SEED
) -> dict[str, NDArray[np.int64]]:
    """Stratified train / calibration / test indices (each sorted, disjoint, covering every sample).

    labels : ndarray (N,) of class indices. Every class is shuffled by one
    ``numpy.random.default_rng(seed)`` (classes in increasing order) and cut at
    ``round(fraction * n_class)``; the same labels and seed always give the same split.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[NDArray[np.int64]]] = {s: [] for s in SPLIT_FRACTIONS}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c)).astype(np.int64)
        start = 0
        for i, (split, frac) in enumerate(SPLIT_FRACTIONS.items()):
            stop = idx.size if i == len(SPLIT_FRACTIONS) - 1 else start + round(frac * idx.size)
            parts[split].append(idx[start:stop])
            start = stop
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


def _sha256(*arrays: NDArray[np.generic]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def digits_datasets(seed: int = DEFAULT_SPLIT_SEED) -> dict[str, Dataset]:
    """The three splits by role (``train``, ``calibration``, ``test``) as datasets.

    With the default seed they are ``digits-train@1``, ``digits-calib@1`` and ``digits-test@1``;
    another seed gives another split, so its versions say so (``1-seed<N>``) rather than reuse a
    registered reference for different samples.
    """
    import sklearn

    x, y = load_digits_arrays()
    version_suffix = "" if seed == DEFAULT_SPLIT_SEED else f"-seed{seed}"
    out: dict[str, Dataset] = {}
    for role, idx in split_indices(y, seed).items():
        name, version = SPLIT_NAMES[role].split("@")
        provenance = {
            "source": SOURCE,
            "sklearn_version": sklearn.__version__,
            "split_seed": int(seed),
            "split": role,
            "split_fractions": "train 0.60, calibration 0.15, test 0.25 of every class",
            "n_source_samples": int(y.size),
            "indices_sha256": _sha256(idx),
            "data_sha256": _sha256(x[idx], y[idx]),
            "scaling": "x / 16",
        }
        out[role] = Dataset(name, version + version_suffix, role, CLASS_NAMES, x[idx], y[idx], provenance)
    return out


__all__: Sequence[str] = (
    "CLASS_NAMES",
    "DIGITS_CALIBRATION_REF",
    "DIGITS_MODEL_REF",
    "DIGITS_REFERENCE_FILE",
    "DIGITS_TEST_REF",
    "DIGITS_TRAIN_REF",
    "INPUT_SHAPE",
    "digits_datasets",
    "digits_reference_path",
    "load_digits_arrays",
    "split_indices",
)

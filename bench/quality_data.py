"""The models the quality benchmark knows and the labelled inputs each one is measured on.

* ``kws-bnn@1``: class-stratified subsets of the synthetic KWS clips: the test subset from the
  held-out test speakers, activation statistics and fine-tuning from two disjoint subsets of the
  validation speakers.
* ``digits-bnn@1``: the registered digit sets: the whole ``digits-test@1`` for accuracy, the whole
  ``digits-calib@1`` for activation statistics, and a class-stratified subset of ``digits-calib@1``
  for fine-tuning (the station has no other labelled data for this model; none of it is test data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from app.calibration.pipeline import ModelContext
from hardware.chip import NetworkProgram

F32 = NDArray[np.float32]
I64 = NDArray[np.int64]


@dataclass(frozen=True)
class BenchData:
    program: NetworkProgram
    stats_bytes: bytes
    test_x: F32
    test_y: I64
    tune_x: F32
    tune_y: I64
    model_name: str
    software_accuracy: float
    calib_clips: int
    data_note: str = ""


@dataclass(frozen=True)
class BenchModel:
    """A model of the benchmark: how to load it and its data, its default subset sizes, its figure.

    ``test_clips`` / ``calib_clips`` None mean the whole test / calibration set.
    """

    ref: str
    load: Callable[[int | None, int | None, int, int, Path | None], tuple[BenchData, ModelContext]]
    test_clips: int | None
    calib_clips: int | None
    tune_clips: int
    figure: str
    sample_word: str
    comparison_note: str = ""


def stratified(
    labels: I64, n: int, rng: np.random.Generator, exclude: set[int] | None = None
) -> NDArray[np.int64]:
    """Sorted indices of ``n // n_classes`` random samples of every class (fewer where a class is short)."""
    classes = np.unique(labels)
    per = max(1, n // classes.size)
    out = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if exclude:
            idx = np.array([i for i in idx if int(i) not in exclude], dtype=np.int64)
        out.append(rng.choice(idx, size=min(per, idx.size), replace=False))
    return np.sort(np.concatenate(out))


def _bench_data(
    path: Path,
    calib_x: F32,
    test: tuple[F32, I64],
    tune: tuple[F32, I64],
    seed: int,
    data_note: str,
) -> tuple[BenchData, ModelContext]:
    from app.nn.model import forward_software, load_model, to_program

    net = load_model(path)
    program = to_program(net)
    ctx = ModelContext.build(program, calib_x, seed=seed)
    sw = float((forward_software(net, test[0]).argmax(axis=1) == test[1]).mean())
    data = BenchData(
        program=program,
        stats_bytes=ctx.to_bytes(),
        test_x=test[0],
        test_y=test[1],
        tune_x=tune[0],
        tune_y=tune[1],
        model_name=f"{program.name}@{program.version}",
        software_accuracy=sw,
        calib_clips=int(calib_x.shape[0]),
        data_note=data_note,
    )
    return data, ctx


def kws_data_note(test_clips: int, calib_clips: int, tune_clips: int) -> str:
    return (
        f"Accuracy on {test_clips} class-stratified clips of the held-out test speakers (a subset, to keep "
        f"the run short); activation statistics from {calib_clips} clips of the validation speakers; "
        f"fine-tuning tunes on {tune_clips} other validation clips."
    )


def load_kws(
    test_clips: int | None, calib_clips: int | None, tune_clips: int, seed: int, model_path: Path | None
) -> tuple[BenchData, ModelContext]:
    from app.nn.kws_data import load_kws_split
    from app.nn.model import reference_model_path

    rng = np.random.default_rng(seed)
    test = load_kws_split("test", progress=False)
    val = load_kws_split("val", progress=False)
    ti = stratified(test.labels, test_clips or test.labels.size, rng)
    ci = stratified(val.labels, calib_clips or val.labels.size, rng)
    ui = stratified(val.labels, tune_clips, rng, exclude=set(ci.tolist()))
    note = kws_data_note(ti.size, ci.size, ui.size)
    return _bench_data(
        model_path or reference_model_path(),
        val.features[ci],
        (test.features[ti], test.labels[ti]),
        (val.features[ui], val.labels[ui]),
        seed,
        note,
    )


def load_digits(
    test_clips: int | None, calib_clips: int | None, tune_clips: int, seed: int, model_path: Path | None
) -> tuple[BenchData, ModelContext]:
    from app.nn.digits import digits_datasets, digits_reference_path

    rng = np.random.default_rng(seed)
    sets = digits_datasets()
    test, calib = sets["test"], sets["calibration"]
    ti = stratified(test.y, test_clips, rng) if test_clips else np.arange(test.y.size)
    ci = stratified(calib.y, calib_clips, rng) if calib_clips else np.arange(calib.y.size)
    ui = stratified(calib.y, tune_clips, rng)
    whole = "all" if ti.size == test.y.size else "a class-stratified subset of"
    note = (
        f"Accuracy on {whole} {ti.size} images of `{test.ref}`; activation statistics from "
        f"{ci.size} images of `{calib.ref}`; fine-tuning tunes on {ui.size} class-stratified images of "
        f"`{calib.ref}` (split seed 0 of sklearn's 1,797 digits, see docs/model.md)."
    )
    return _bench_data(
        model_path or digits_reference_path(),
        calib.x[ci],
        (test.x[ti], test.y[ti]),
        (calib.x[ui], calib.y[ui]),
        seed,
        note,
    )


KWS_COMPARISON = "Published: the thesis (2022) lifted 11.96-53.17 % to above 70 %; the follow-up (2023) 58.18 % to 88.58 %. "
MODELS: dict[str, BenchModel] = {
    "kws-bnn@1": BenchModel("kws-bnn@1", load_kws, 360, 240, 480, "quality.png", "clips", KWS_COMPARISON),
    "digits-bnn@1": BenchModel(
        "digits-bnn@1", load_digits, None, None, 120, "quality-digits-bnn.png", "images"
    ),
}
DEFAULT_MODEL = "kws-bnn@1"


def load_bench_data(
    test_clips: int | None,
    calib_clips: int | None,
    tune_clips: int,
    seed: int,
    model_path: Path | None = None,
    model: str = DEFAULT_MODEL,
) -> tuple[BenchData, ModelContext]:
    """The benchmark model ``model`` (its file, or ``model_path``), its activation statistics and
    its labelled subsets."""
    return MODELS[model].load(test_clips, calib_clips, tune_clips, seed, model_path)

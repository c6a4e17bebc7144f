"""The strong competitor on a die under the probe: per-chip threshold fine-tuning with the die in the
loop (:mod:`app.calibration.finetune`), within a tester-time budget.

The rounds run while the next measurement pass fits the budget (``tester_budget_s``, counted with the
driver's own tester seconds); the thresholds kept are those of the pass with the best calibration
accuracy measured on the die, so the method never ends worse than where it started (baseline B's
two-point trim, the same copies and signature as cimcal).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from app.calibration.finetune import FinetuneConfig, fit_surrogate, measure_pass, train_thresholds
from hardware.chip import NetworkProgram, WeightImage, encode_image
from hardware.driver import Driver


@dataclass(frozen=True)
class FinetuneRun:
    """The image fine-tuning settled on and what it cost on this die."""

    image: WeightImage
    image_bytes: bytes
    tune_accuracy: float
    start_accuracy: float
    passes: int
    tester_s: float
    host_s: float


def finetune_on_die(
    driver: Driver,
    program: NetworkProgram,
    start: WeightImage,
    features: NDArray[np.float32],
    labels: NDArray[np.integer],
    teacher_logits: NDArray[np.float32],
    *,
    tester_budget_s: float,
    max_passes: int = 6,
    config: FinetuneConfig | None = None,
    rng: np.random.Generator,
) -> FinetuneRun:
    """Fine-tune the thresholds of ``start`` on the die under the probe (see the module docstring).

    features (N, C, H, W) / labels (N,): the calibration set, disjoint from the functional test's;
    teacher_logits: the ideal chip's logits on it.
    """
    t0, s0 = time.perf_counter(), driver.tester_time_s
    driver.program_image(encode_image(start))  # the weights and copies; thresholds live on the host

    def readout(macro: int, inputs: NDArray[np.uint8]) -> NDArray[np.int16]:
        return driver.read_macro(macro, inputs)

    thr = {k: np.asarray(v, np.int32) for k, v in start.thresholds.items()}
    y = np.asarray(labels).astype(np.int64)
    best_thr, best_acc, start_acc = thr, -1.0, 0.0
    passes = 0
    pass_s = 0.0
    while passes < max_passes:
        spent = driver.tester_time_s - s0
        if passes and spent + pass_s > tester_budget_s:
            break
        image = _replace_thresholds(start, thr)
        before = driver.tester_time_s
        dp = measure_pass(image, features, readout, rng=rng, keep=(config or FinetuneConfig()).fit_samples)
        pass_s = driver.tester_time_s - before
        passes += 1
        acc = float((dp.logits.argmax(axis=1) == y).mean())
        if passes == 1:
            start_acc = acc
        if acc > best_acc:
            best_thr, best_acc = thr, acc
        if passes >= max_passes or driver.tester_time_s - s0 + pass_s > tester_budget_s:
            break
        surrogate = fit_surrogate(image, program, dp)
        # The first round starts from the surrogate's own two-point trim, later ones from the last.
        thr = train_thresholds(
            program,
            surrogate,
            features,
            y,
            teacher_logits,
            thr if passes > 1 else None,
            config=config,
            rng=rng,
        )
    final = _replace_thresholds(start, best_thr)
    return FinetuneRun(
        image=final,
        image_bytes=encode_image(final),
        tune_accuracy=best_acc,
        start_accuracy=start_acc,
        passes=passes,
        tester_s=driver.tester_time_s - s0,
        host_s=time.perf_counter() - t0,
    )


def _replace_thresholds(image: WeightImage, thr: dict[str, NDArray[np.int32]]) -> WeightImage:
    out = replace(image, thresholds={k: np.asarray(v, np.int32) for k, v in thr.items()})
    out.validate()
    return out

"""The tester side of characterization: write the patterns, read every macro."""

from __future__ import annotations

from functools import partial

import numpy as np
from numpy.typing import NDArray

from app.calibration.characterize.config import CharacterizationConfig
from app.calibration.characterize.design import Design
from app.calibration.transient import RetryingCalls
from hardware.driver import Driver


def measure(
    driver: Driver, design: Design, config: CharacterizationConfig, calls: RetryingCalls | None = None
) -> tuple[NDArray[np.int16], NDArray[np.int16]]:
    """Write and read every macro with both patterns: codes ``(n, n_macros, phys_cols)`` for W and -W.

    Each macro is written, then read in calls of at most ``config.max_vectors_per_call`` vectors, each
    call through ``calls`` (retried after a transient error; default: the die under the probe with
    ``config.attempts`` tries per call).
    """
    g = driver.geometry()
    if calls is None:
        calls = RetryingCalls(driver, driver.identify().address, attempts=config.attempts)
    chunk = config.max_vectors_per_call
    n = design.inputs.shape[0]
    out = []
    for pattern in (design.weights, (-design.weights).astype(np.int8)):
        per_macro = []
        for m in range(g.n_macros):
            write = partial(driver.write_macro, m, pattern)
            calls.call(write)
            parts = [
                calls.call(partial(driver.read_macro, m, design.inputs[i : i + chunk]), restore=write)
                for i in range(0, n, chunk)
            ]
            per_macro.append(np.concatenate(parts))
        out.append(np.stack(per_macro, axis=1))
    return out[0], out[1]

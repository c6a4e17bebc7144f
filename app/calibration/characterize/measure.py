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

    ``config.broadcast``: each pattern is written into every macro with one ``write_macros`` call (a
    broadcast write where the tester has one), then every macro is read; otherwise each macro is
    written and read before the next. Reads go in calls of at most ``config.max_vectors_per_call``
    vectors. Every call goes through ``calls`` (retried after a transient error; after a lost contact
    the pattern is written again before the read is repeated; default: the die under the probe with
    ``config.attempts`` tries per call). Every macro holds -W afterwards.
    """
    g = driver.geometry()
    if calls is None:
        calls = RetryingCalls(driver, driver.identify().address, attempts=config.attempts)
    chunk = config.max_vectors_per_call
    n = design.inputs.shape[0]
    macros = list(range(g.n_macros))
    out = []
    for pattern in (design.weights, (-design.weights).astype(np.int8)):
        per_macro = []
        broadcast = partial(driver.write_macros, macros, pattern)
        if config.broadcast:
            calls.call(broadcast)
        for m in macros:
            write = broadcast if config.broadcast else partial(driver.write_macro, m, pattern)
            if not config.broadcast:
                calls.call(write)
            parts = [
                calls.call(partial(driver.read_macro, m, design.inputs[i : i + chunk]), restore=write)
                for i in range(0, n, chunk)
            ]
            per_macro.append(np.concatenate(parts))
        out.append(np.stack(per_macro, axis=1))
    return out[0], out[1]

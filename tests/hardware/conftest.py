from __future__ import annotations

import numpy as np
import pytest

from hardware.chip import ChipGeometry, LayerSpec, NetworkProgram


def random_pm1(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.choice(np.array([-1, 1], dtype=np.int8), size=shape)


@pytest.fixture
def toy_program() -> NetworkProgram:
    """A small network: a digital conv, two binary convs (the first spans three row tiles), a classifier."""
    rng = np.random.default_rng(7)
    return NetworkProgram(
        name="toy",
        version="1",
        input_shape=(1, 12, 12),
        class_names=("a", "b", "c"),
        layers=(
            LayerSpec(
                "conv_digital",
                "c0",
                {"stride": [1, 1], "padding": [1, 1]},
                {
                    "weight": rng.normal(size=(64, 1, 3, 3)).astype(np.float32),
                    "bias": np.zeros(64, np.float32),
                },
            ),
            LayerSpec(
                "conv_binary",
                "b1",
                {"stride": [1, 1], "padding": [1, 1], "pool": [2, 2], "weight_shape": [70, 64, 3, 3]},
                {"weight": random_pm1(rng, (70, 64, 3, 3)), "threshold": np.zeros(70, np.int32)},
            ),
            LayerSpec("flatten", "flat"),
            LayerSpec(
                "dense_binary",
                "d1",
                {"weight_shape": [16, 70 * 36]},
                {"weight": random_pm1(rng, (16, 70 * 36)), "threshold": np.zeros(16, np.int32)},
            ),
            LayerSpec(
                "dense_digital",
                "fc",
                {},
                {"weight": rng.normal(size=(3, 16)).astype(np.float32), "bias": np.zeros(3, np.float32)},
            ),
        ),
    )


@pytest.fixture
def geometry() -> ChipGeometry:
    return ChipGeometry()

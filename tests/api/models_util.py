"""A small binary network in the project's model format, for tests that need a model to upload."""

from __future__ import annotations

import dataclasses

import numpy as np

from app.nn.model import BinaryNetwork, Layer, load_reference_model, model_bytes


def tiny_kws_model(name: str = "tiny", version: str = "1", seed: int = 0) -> bytes:
    """A 12-class KWS-shaped network (input 1x40x49) with two binary convolutions; untrained."""
    rng = np.random.default_rng(seed)

    def pm1(shape: tuple[int, ...]) -> np.ndarray:
        return rng.choice(np.array([-1, 1], dtype=np.int8), size=shape)

    layers = (
        Layer(
            "conv_digital",
            "c0",
            weight=rng.normal(size=(8, 1, 3, 3)).astype(np.float32),
            bias=rng.normal(size=8).astype(np.float32),
            stride=(2, 2),
            padding=(1, 1),
        ),
        Layer("maxpool", "p0", pool=(2, 2)),
        Layer(
            "conv_binary", "b1", weight=pm1((16, 8, 3, 3)), threshold=np.zeros(16, np.int32), padding=(1, 1)
        ),
        Layer(
            "conv_binary",
            "b2",
            weight=pm1((16, 16, 3, 3)),
            threshold=np.zeros(16, np.int32),
            padding=(1, 1),
            pool=(2, 2),
        ),
        Layer("avgpool_global", "gap"),
        Layer(
            "dense_digital",
            "fc",
            weight=rng.normal(size=(12, 16)).astype(np.float32),
            bias=np.zeros(12, np.float32),
        ),
    )
    names = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "silence", "unknown")
    return model_bytes(BinaryNetwork(name=name, version=version, layers=layers, class_names=names))


def reference_model_as(name: str, version: str) -> bytes:
    """The trained reference KWS model under another name and version: a second model that passes."""
    return model_bytes(dataclasses.replace(load_reference_model(), name=name, version=version))

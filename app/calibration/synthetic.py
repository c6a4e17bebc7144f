"""Synthetic binary networks and features, for tests and for benchmarks run without the reference model.

The network has the layer kinds of docs/CONTRACT.md (a digital first convolution, binary convolutions
that span one or more row tiles, global average pooling, a digital classifier). Thresholds are set
layer by layer to the median ideal sum of the features given, so every channel fires about half the
time, as batch-norm would arrange in a trained network.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from hardware.chip import (
    ChipGeometry,
    ImageHeader,
    LayerSpec,
    NetworkProgram,
    build_image,
    execute_network,
    ideal_readout,
)


def synthetic_features(
    n: int, input_shape: tuple[int, int, int], rng: np.random.Generator
) -> NDArray[np.float32]:
    """Smooth random feature maps ``(n, *input_shape)`` float32 (spatially correlated noise)."""
    x = rng.standard_normal((n, *input_shape)).astype(np.float32)
    # A 3-tap box blur along both axes gives the maps structure a 3x3 convolution can see.
    for axis in (2, 3):
        x = (x + np.roll(x, 1, axis=axis) + np.roll(x, -1, axis=axis)) / np.float32(np.sqrt(3.0))
    return x


def synthetic_program(
    rng: np.random.Generator,
    *,
    input_shape: tuple[int, int, int] = (1, 16, 16),
    channels: Sequence[int] = (16, 32, 32),
    n_classes: int = 4,
    conv0_stride: int = 1,
    pools: Sequence[int] | None = None,
    calib_features: NDArray[np.float32] | None = None,
    geometry: ChipGeometry | None = None,
    name: str = "synthetic",
) -> NetworkProgram:
    """A random BNN: conv_digital(1 -> channels[0]) then 3x3 binary convolutions (max-pool ``pools``).

    ``channels`` lists the output channels of every convolution; binary layer ``i`` has
    ``channels[i-1] * 9`` rows. Thresholds (MAC units) are the per-channel medians of the ideal
    code sums on ``calib_features`` (64 synthetic maps when omitted).
    """
    geometry = geometry or ChipGeometry()
    c_in = input_shape[0]
    layers: list[LayerSpec] = [
        LayerSpec(
            "conv_digital",
            "conv0",
            {"stride": [conv0_stride, conv0_stride], "padding": [1, 1]},
            {
                "weight": (rng.standard_normal((channels[0], c_in, 3, 3)) / 3.0).astype(np.float32),
                "bias": (0.1 * rng.standard_normal(channels[0])).astype(np.float32),
            },
        )
    ]
    prev = channels[0]
    pools = list(pools) if pools is not None else [2] * (len(channels) - 1)
    for i, c in enumerate(channels[1:], start=1):
        w = np.where(rng.random((c, prev, 3, 3)) < 0.5, -1, 1).astype(np.int8)
        layers.append(
            LayerSpec(
                "conv_binary",
                f"bconv{i}",
                {
                    "stride": [1, 1],
                    "padding": [1, 1],
                    "pool": [pools[i - 1], pools[i - 1]],
                    "weight_shape": list(w.shape),
                },
                {"weight": w, "threshold": np.zeros(c, np.int32)},
            )
        )
        prev = c
    layers.append(LayerSpec("avgpool_global", "gap"))
    layers.append(
        LayerSpec(
            "dense_digital",
            "fc",
            {},
            {
                "weight": rng.standard_normal((n_classes, prev)).astype(np.float32),
                "bias": np.zeros(n_classes, np.float32),
            },
        )
    )
    program = NetworkProgram(
        name, "1", input_shape, tuple(f"class{k}" for k in range(n_classes)), tuple(layers)
    )
    feats = calib_features if calib_features is not None else synthetic_features(64, input_shape, rng)
    program = set_median_thresholds(program, feats, geometry)
    return _standardize_classifier(program, feats, geometry)


def _standardize_classifier(
    program: NetworkProgram, features: NDArray[np.float32], geometry: ChipGeometry
) -> NetworkProgram:
    """Fold the mean and spread of the pooled features into the classifier, so classes are balanced."""
    fc = program.layers[-1]
    image = build_image(program, geometry, ImageHeader("", program.name, program.version, "", "synthetic"))
    zero_fc = LayerSpec(
        fc.kind,
        fc.name,
        dict(fc.attrs),
        {
            "weight": np.eye(fc.arrays["weight"].shape[1], dtype=np.float32),
            "bias": np.zeros(fc.arrays["weight"].shape[1], np.float32),
        },
    )
    probe = NetworkProgram(
        program.name,
        program.version,
        program.input_shape,
        program.class_names,
        (*program.layers[:-1], zero_fc),
    )
    pooled = execute_network(
        build_image(probe, geometry, image.header), features, ideal_readout(image.macros, geometry)
    ).astype(np.float64)
    mu, sd = pooled.mean(axis=0), pooled.std(axis=0) + 1e-3
    w = np.asarray(fc.arrays["weight"], np.float64) / sd[None, :]
    b = -(w @ mu)
    new_fc = LayerSpec(
        fc.kind, fc.name, dict(fc.attrs), {"weight": w.astype(np.float32), "bias": b.astype(np.float32)}
    )
    return NetworkProgram(
        program.name,
        program.version,
        program.input_shape,
        program.class_names,
        (*program.layers[:-1], new_fc),
    )


def set_median_thresholds(
    program: NetworkProgram, features: NDArray[np.float32], geometry: ChipGeometry
) -> NetworkProgram:
    """Program with each binary layer's thresholds set to the median ideal code sum on ``features``."""
    layers = list(program.layers)
    for idx, layer in enumerate(layers):
        if not layer.is_binary:
            continue
        prog = NetworkProgram(
            program.name, program.version, program.input_shape, program.class_names, tuple(layers)
        )
        image = build_image(prog, geometry, ImageHeader("", prog.name, prog.version, "", "synthetic"))
        captured: list[NDArray[np.uint8]] = []

        def tap(
            name: str, x: NDArray[np.uint8], target: str = layer.name, out: list[NDArray[np.uint8]] = captured
        ) -> None:
            if name == target:
                out.append(x)

        execute_network(image, features, ideal_readout(image.macros, geometry), tap=tap)
        patches = np.concatenate(captured)
        wm = layer.weight_matrix().astype(np.float32)
        sums = np.zeros((patches.shape[0], layer.n_out), np.float64)
        for r0 in range(0, layer.n_rows, geometry.rows):
            part = patches[:, r0 : r0 + geometry.rows].astype(np.float32) @ wm[r0 : r0 + geometry.rows]
            sums += geometry.ideal_codes(part)
        thr = np.ceil(np.median(sums, axis=0)).astype(np.int32)
        arrays = dict(layer.arrays)
        arrays["threshold"] = thr
        layers[idx] = LayerSpec(layer.kind, layer.name, dict(layer.attrs), arrays)
    return NetworkProgram(
        program.name, program.version, program.input_shape, program.class_names, tuple(layers)
    )


def ideal_predictions(
    program: NetworkProgram, features: NDArray[np.float32], geometry: ChipGeometry | None = None
) -> NDArray[np.int64]:
    """Class predicted by the ideal chip for every feature map: labels for synthetic benchmarks."""
    geometry = geometry or ChipGeometry()
    image = build_image(program, geometry, ImageHeader("", program.name, program.version, "", "ideal"))
    logits = execute_network(image, features, ideal_readout(image.macros, geometry))
    return np.asarray(logits.argmax(axis=1), dtype=np.int64)

"""How a network runs on the ideal (variation-free) chip, compared with the exact software pass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from app.nn.network import BinaryNetwork, forward_software, to_program


@dataclass(frozen=True)
class ChipAgreement:
    """How the ideal (variation-free) chip compares with :func:`forward_software`.

    ``agreement``: fraction of clips with the same predicted class; ``saturated_fraction``: per
    binary layer, the fraction of (position, column, row tile) partial sums outside the ADC range
    (clipped); ``chip_accuracy`` / ``software_accuracy`` when labels are given.
    """

    agreement: float
    saturated_fraction: Mapping[str, float]
    chip_accuracy: float | None = None
    software_accuracy: float | None = None


def ideal_chip_agreement(
    net: BinaryNetwork, features: NDArray[np.floating], labels: NDArray[np.integer] | None = None
) -> ChipAgreement:
    """Run ``net`` through ``hardware.chip.execute_network`` with the ideal readout of the default
    geometry and compare with the exact software pass; network inputs (N, *input_shape)."""
    from hardware.chip import ChipGeometry, ImageHeader, build_image, execute_network, ideal_readout

    geometry = ChipGeometry()
    image = build_image(to_program(net), geometry, ImageHeader("IDEAL", net.name, net.version, "", "ideal"))
    read = ideal_readout(image.macros, geometry)
    mats = image.macros.astype(np.float32)
    layer_of = {t.macro: t.layer for t in image.tiles}
    cols_of = {t.macro: t.n_cols for t in image.tiles}
    clipped: dict[str, int] = {}
    total: dict[str, int] = {}

    def counting_read(macro: int, inputs: NDArray[np.uint8]) -> NDArray[np.int16]:
        exact = (inputs.astype(np.float32) @ mats[macro])[:, : cols_of[macro]] / geometry.adc_lsb_mac
        name = layer_of[macro]
        out = np.rint(exact)
        clipped[name] = clipped.get(name, 0) + int(
            np.sum((out < geometry.code_min) | (out > geometry.code_max))
        )
        total[name] = total.get(name, 0) + exact.size
        return read(macro, inputs)

    x = np.asarray(features, dtype=np.float32)
    chip = np.concatenate(
        [execute_network(image, x[i : i + 128], counting_read) for i in range(0, len(x), 128)]
    )
    soft = forward_software(net, x)
    agreement = float(np.mean(chip.argmax(1) == soft.argmax(1)))
    sat = {name: clipped[name] / max(1, total[name]) for name in total}
    if labels is None:
        return ChipAgreement(agreement, sat)
    y = np.asarray(labels)
    return ChipAgreement(
        agreement, sat, float(np.mean(chip.argmax(1) == y)), float(np.mean(soft.argmax(1) == y))
    )

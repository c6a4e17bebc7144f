"""The simulator's fast read path computes exactly what the reference formulation computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from hardware.chip import ChipGeometry, NetworkProgram
from hardware.driver import DieAddress
from hardware.sim import physics
from hardware.sim.corners import CORNERS, corner_variation
from hardware.sim.physics import MacroArray, code_bounds, quantize, quantize_bounded
from hardware.sim.variation import FaultConfig, die_variation


def reference_read(
    arr: MacroArray, inputs: NDArray[np.uint8], sigma: float, rng: np.random.Generator
) -> NDArray[np.int16]:
    """The read as first written: one temporary per step, edges gathered with explicit rail masks."""
    g = arr.geometry
    a = inputs.astype(np.float32)
    v = a @ arr.effective
    if arr._ir_per_row:
        v *= 1.0 - arr._ir_per_row * a.sum(axis=1, keepdims=True)
    if arr._sat is not None:
        v = arr._sat * np.tanh(v / arr._sat)
    v += arr.offset_mac
    if sigma > 0:
        v += rng.standard_normal(v.shape, dtype=np.float32) * np.float32(sigma)
    if arr._bow_mac is not None:
        lo = (g.code_min - 0.5) * g.adc_lsb_mac
        t = np.clip((v - np.float32(lo)) / np.float32(g.adc_levels * g.adc_lsb_mac), 0.0, 1.0)
        v += arr._bow_mac * np.sin(np.float32(np.pi) * t).astype(np.float32)
    codes = quantize(v, arr._edges, arr._stride, g)
    if arr._dead.size:
        codes[:, arr._dead] = arr._dead_code
    return codes


@pytest.mark.parametrize("block", [256, 4096])
@pytest.mark.parametrize("corner", sorted(CORNERS))
def test_read_equals_the_reference_bit_for_bit(
    corner: str, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 900 vectors: one block, or four blocks of a read (the last one short).
    monkeypatch.setattr(physics, "READ_BLOCK_ROWS", block)
    g = ChipGeometry()
    faults = FaultConfig(0.0, 0.0, 0.0)
    gen = np.random.default_rng(5)
    for x in range(3):
        truth = die_variation(11, DieAddress("PHYS", 1, x, 0), g, corner_variation(corner, 1.0), faults)
        weights = np.where(gen.random((g.rows, g.phys_cols)) < 0.5, 1, -1).astype(np.int8)
        for macro in (0, 7, g.n_macros - 1):
            arr = MacroArray(g, truth, macro, weights)
            # Sparse and dense inputs, all-zero and all-one rows: every rail and mid-range code.
            inputs = (gen.random((900, g.rows)) < gen.uniform(0.05, 0.95, (900, 1))).astype(np.uint8)
            inputs[0] = 0
            inputs[1] = 1
            for sigma in (0.0, 0.7):
                fast = arr.read(inputs, sigma, np.random.default_rng(macro + 100 * x))
                ref = reference_read(arr, inputs, sigma, np.random.default_rng(macro + 100 * x))
                assert fast.dtype == ref.dtype == np.int16
                np.testing.assert_array_equal(fast, ref)


def test_quantize_bounded_equals_quantize_at_edges_and_rails() -> None:
    g = ChipGeometry()
    gen = np.random.default_rng(3)
    cols, stride = 9, g.adc_levels - 1
    k = np.arange(g.code_min + 1, g.code_max + 1, dtype=np.float32)
    edges = ((k[None, :] - 0.5 + gen.uniform(-0.45, 0.45, (cols, stride))) * g.adc_lsb_mac).astype(np.float32)
    flat = edges.reshape(-1)
    # Values exactly on every edge, one ulp either side, far beyond both rails, and uniform ones.
    on = edges.T
    v = np.concatenate(
        [
            on,
            np.nextafter(on, np.float32(-np.inf)),
            np.nextafter(on, np.float32(np.inf)),
            np.full((2, cols), 1e6, dtype=np.float32),
            np.full((2, cols), -1e6, dtype=np.float32),
            gen.uniform(g.code_min - 3, g.code_max + 3, (500, cols)).astype(np.float32),
        ]
    ).astype(np.float32)
    fast = quantize_bounded(v, code_bounds(flat, stride), g)
    np.testing.assert_array_equal(fast, quantize(v, flat, stride, g))
    assert fast.min() == g.code_min and fast.max() == g.code_max


def _die_arrays(corner: str, macros: NDArray[np.int8], g: ChipGeometry) -> list[MacroArray]:
    truth = die_variation(13, DieAddress("PHYS", 2, 1, 1), g, corner_variation(corner, 1.0), FaultConfig())
    return [MacroArray(g, truth, m, macros[m]) for m in range(g.n_macros)]


def test_a_column_subset_reads_what_the_full_read_gives_on_those_columns() -> None:
    g = ChipGeometry()
    gen = np.random.default_rng(8)
    truth = die_variation(
        13, DieAddress("PHYS", 2, 1, 1), g, corner_variation("aggressive", 1.0), FaultConfig()
    )
    weights = np.where(gen.random((g.rows, g.phys_cols)) < 0.5, 1, -1).astype(np.int8)
    # A macro with a dead bit line, so that the subset keeps its dead code.
    macro = int(np.flatnonzero(truth.dead_cols.any(axis=1))[0]) if truth.dead_cols.any() else 0
    arr = MacroArray(g, truth, macro, weights)
    dead = np.flatnonzero(truth.dead_cols[macro])
    cols = np.concatenate([dead, np.array([60, 3, 17, 0, 67])]).astype(np.int16)
    inputs = (gen.random((400, g.rows)) < 0.4).astype(np.uint8)
    # Without noise the subset is the full read's columns, bit for bit.
    full = arr.read(inputs, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(
        arr.columns(cols).read(inputs, 0.0, np.random.default_rng(0)), full[:, cols]
    )
    assert arr.columns(cols) is arr.columns(cols.copy())  # cached per column list
    # With noise, each column's codes have the full read's distribution (one input, read many times).
    one = np.repeat(inputs[:1], 40_000, axis=0)
    a = arr.read(one, 1.0, np.random.default_rng(1))[:, cols].astype(np.float64)
    b = arr.columns(cols).read(one, 1.0, np.random.default_rng(2)).astype(np.float64)
    np.testing.assert_allclose(a.mean(axis=0), b.mean(axis=0), atol=0.03)
    np.testing.assert_allclose(a.std(axis=0), b.std(axis=0), atol=0.03)
    assert (b.std(axis=0)[len(dead) :] > 0.5).all()  # the live columns do see the read noise
    # torch's sampler (the network path's) gives the same distribution, and is a function of its seed.
    t1 = arr.columns(cols).read(one, 1.0, np.random.default_rng(3), noise=torch.Generator().manual_seed(5))
    t2 = arr.columns(cols).read(one, 1.0, np.random.default_rng(4), noise=torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(t1, t2)
    c = t1.astype(np.float64)
    np.testing.assert_allclose(a.mean(axis=0), c.mean(axis=0), atol=0.03)
    np.testing.assert_allclose(a.std(axis=0), c.std(axis=0), atol=0.03)


def test_network_through_mapped_columns_equals_the_full_readout(toy_program: NetworkProgram) -> None:
    from hardware.chip import ImageHeader, build_image, execute_network

    g = ChipGeometry()
    image = build_image(toy_program, g, ImageHeader("PHYS-W02-X+001Y+001", "toy", "1", "", "t"))
    arrays = _die_arrays("skewed", image.macros, g)
    x = np.random.default_rng(4).normal(size=(16, 1, 12, 12)).astype(np.float32)

    def full(macro: int, inputs: NDArray[np.uint8]) -> NDArray[np.int16]:
        return arrays[macro].read(inputs, 0.0, np.random.default_rng(0))

    def mapped(macro: int, inputs: NDArray[np.uint8], cols: NDArray[np.int16]) -> NDArray[np.int16]:
        return arrays[macro].columns(cols).read(inputs, 0.0, np.random.default_rng(0))

    np.testing.assert_array_equal(
        execute_network(image, x, full), execute_network(image, x, full, read_cols=mapped)
    )

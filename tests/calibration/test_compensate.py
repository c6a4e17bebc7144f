"""Compensation: deterministic images, repaired defects, and dies that decide like the ideal chip."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from numpy.typing import NDArray

from app.calibration.activations import StatsFormatError
from app.calibration.baselines import uncalibrated_image
from app.calibration.characterize import characterize
from app.calibration.compensate import CompensationConfig
from app.calibration.evaluate import measured_layer_agreement
from app.calibration.pipeline import ALGORITHM_VERSION, ModelContext, compensate
from app.calibration.signature import Signature
from bench.oracle import oracle_signature
from hardware.chip import NetworkProgram, decode_image, map_network
from hardware.sim.driver import SimulatedDriver, SimulatedFleet
from tests.calibration.conftest import ADDRESS, SMALL, SMALL_BUDGET, fleet_config

Tiny = tuple[NetworkProgram, NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]]
Make = Callable[..., SimulatedDriver]
ECID = ADDRESS.ecid


@pytest.fixture(scope="module")
def ctx(tiny: Tiny) -> ModelContext:
    program, calib, _, _ = tiny
    return ModelContext.build(program, calib, geometry=SMALL)


def test_same_inputs_give_identical_image_bytes(ctx: ModelContext, make_driver: Make) -> None:
    sig = characterize(make_driver(2.0), budget=SMALL_BUDGET, rng=0).signature
    a = compensate(ctx, sig, ECID)
    b = compensate(ctx, Signature.from_bytes(sig.to_bytes()), ECID)
    c = compensate(ModelContext.from_bytes(ctx.to_bytes(), ctx.program), sig, ECID)
    assert a.image_bytes == b.image_bytes == c.image_bytes
    header = decode_image(a.image_bytes).header
    assert header.algorithm_version == ALGORITHM_VERSION == a.algorithm_version
    assert header.signature_hash == sig.sha256 and header.ecid == ECID
    assert 0.5 < a.predicted_agreement <= 1.0 and a.compute_s < 5.0


def test_stats_of_another_program_are_refused(ctx: ModelContext, tiny: Tiny) -> None:
    program = tiny[0]
    layers = list(program.layers)
    fc = layers[-1]
    layers[-1] = replace(fc, arrays={**fc.arrays, "bias": fc.arrays["bias"] + 1})
    with pytest.raises(StatsFormatError):
        ModelContext.from_bytes(ctx.to_bytes(), replace(program, layers=tuple(layers)))


def test_calibrated_die_decides_like_the_ideal_chip(ctx: ModelContext, tiny: Tiny, make_driver: Make) -> None:
    program, calib, _, _ = tiny
    drv = make_driver(2.0)
    sig = characterize(drv, budget=2 * SMALL_BUDGET, rng=0).signature
    comp = compensate(ctx, sig, ECID)
    cal = measured_layer_agreement(drv, comp.image, program, calib[:24], rng=0)
    raw = measured_layer_agreement(drv, uncalibrated_image(program, SMALL), program, calib[:24], rng=0)
    for name in cal:
        assert cal[name] > raw[name] + 0.03, (name, cal[name], raw[name])
        # The prediction made from the signature alone is what the die then does.
        assert comp.layer_agreement[name] == pytest.approx(cal[name], abs=0.03)


def _with_dead(sig: Signature, macro: int, col: int) -> Signature:
    dead = sig.dead_cols.copy()
    code = sig.dead_code.copy()
    dead[macro, col] = True
    code[macro, col] = SMALL.code_max
    return replace(sig, dead_cols=dead, dead_code=code)


def test_dead_column_moves_to_a_free_bit_line(ctx: ModelContext, tiny: Tiny) -> None:
    program = tiny[0]
    sig = oracle_signature(fleet_config(1.0, dead_col_rate=0.0, stuck_cell_rate=0.0), ADDRESS)
    tile = next(t for t in map_network(program, SMALL) if t.n_cols < SMALL.cols)  # leaves data columns free
    sig = _with_dead(sig, tile.macro, 3)
    comp = compensate(ctx, sig, ECID)
    image = comp.image
    phys = int(image.col_map[tile.macro, 3])
    assert phys != 3 and not sig.dead_cols[tile.macro, phys]
    assert 3 not in image.col_map[tile.macro, : tile.n_cols]
    weights = program.layer(tile.layer).weight_matrix()
    np.testing.assert_array_equal(
        image.macros[tile.macro, : tile.n_rows, phys],
        weights[tile.row_start : tile.row_start + tile.n_rows, tile.col_start + 3],
    )
    assert comp.rerouted_cols >= 1 and comp.unrepaired_dead_cols == 0 and comp.calibratable


def test_a_macro_beyond_repair_is_swapped_for_an_idle_one(ctx: ModelContext, tiny: Tiny) -> None:
    program = tiny[0]
    clean = oracle_signature(fleet_config(1.0, dead_col_rate=0.0, stuck_cell_rate=0.0), ADDRESS)
    tile = next(t for t in map_network(program, SMALL) if t.n_cols == SMALL.cols)  # only the spares are free
    sig = clean
    for col in (0, 1, 2, SMALL.cols, SMALL.cols + 1):  # three used columns dead, and both spares
        sig = _with_dead(sig, tile.macro, col)
    comp = compensate(ctx, sig, ECID, config=CompensationConfig(replicas=1))
    moved = [
        t
        for t in comp.image.tiles
        if (t.layer, t.row_tile, t.col_tile) == (tile.layer, tile.row_tile, tile.col_tile)
    ]
    assert [t.macro for t in moved] != [tile.macro] and comp.unrepaired_dead_cols == 0 and comp.calibratable
    # The same defects in every macro leave nowhere to go: not calibratable (bin 11).
    for m in range(SMALL.n_macros):
        for col in (0, 1, 2, SMALL.cols, SMALL.cols + 1):
            sig = _with_dead(sig, m, col)
    comp = compensate(ctx, sig, ECID)
    assert comp.unrepaired_dead_cols > 0 and not comp.calibratable and "dead" in comp.reason


def test_stuck_cell_that_disagrees_on_a_busy_row_is_routed_away(ctx: ModelContext, tiny: Tiny) -> None:
    program = tiny[0]
    sig = oracle_signature(fleet_config(1.0, dead_col_rate=0.0, stuck_cell_rate=0.0), ADDRESS)
    tile = next(t for t in map_network(program, SMALL) if t.n_cols < SMALL.cols)
    ls = ctx.stats.layers[tile.layer]
    rows = np.argsort(-ls.p_row[tile.row_start : tile.row_start + tile.n_rows])[:3]
    w = program.layer(tile.layer).weight_matrix()[
        tile.row_start : tile.row_start + tile.n_rows, tile.col_start + 1
    ]
    stuck = replace(
        sig.stuck,
        macro=np.full(3, tile.macro),
        row=rows.astype(np.int64),
        col=np.full(3, 1),
        value=(-w[rows]).astype(np.int8),
        magnitude=np.ones(3, np.float32),
    )
    comp = compensate(
        ctx,
        replace(sig, stuck=type(sig.stuck)(stuck.macro, stuck.row, stuck.col, stuck.value, stuck.magnitude)),
        ECID,
    )
    assert int(comp.image.col_map[tile.macro, 1]) != 1


def test_compensation_models_saturation_and_ir_drop_when_the_signature_has_them(
    ctx: ModelContext, tiny: Tiny
) -> None:
    """On a die whose bit lines saturate early and droop with the active rows, the ORACLE signature
    with those terms gives an image that agrees more with the ideal chip than without them, and
    predicts its agreement better (the linear model is over-optimistic on such a die)."""
    program, calib, _, _ = tiny
    base = fleet_config(1.0)
    config = replace(base, variation=replace(base.variation, bl_sat_mac=6.0, ir_drop=0.3))
    drv = SimulatedDriver(fleet=SimulatedFleet(config), noise_seed=4).connect()
    drv.probe(ADDRESS)
    linear = compensate(ctx, oracle_signature(config, ADDRESS), ECID)
    full = compensate(ctx, oracle_signature(config, ADDRESS, nonlinear=True), ECID)
    assert full.image_bytes != linear.image_bytes
    agree = {
        name: float(
            np.mean(list(measured_layer_agreement(drv, c.image, program, calib[:32], rng=1).values()))
        )
        for name, c in (("linear", linear), ("full", full))
    }
    assert agree["full"] > agree["linear"], agree
    assert abs(full.predicted_agreement - agree["full"]) < abs(linear.predicted_agreement - agree["linear"])

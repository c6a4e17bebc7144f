from __future__ import annotations

import numpy as np
import pytest

from hardware.chip import (
    ImageHeader,
    NetworkProgram,
    build_image,
    encode_image,
    execute_network,
    ideal_readout,
)
from hardware.driver import (
    ContactError,
    DieAddress,
    DieFault,
    HardwareTimeoutError,
    NotConnectedError,
    ProtocolError,
)
from hardware.sim.driver import FleetConfig, SimulatedDriver, SimulatedFleet
from hardware.sim.oracle import oracle_die_truth
from hardware.sim.variation import VariationConfig

DIE = DieAddress("LOT1", 2, 3, -1)


def _driver(**kw: object) -> SimulatedDriver:
    d = SimulatedDriver(**kw)  # type: ignore[arg-type]
    d.connect()
    d.probe(DIE)
    return d


def test_read_noise_differs_between_reads_but_not_between_drivers_with_one_seed() -> None:
    d = _driver(noise_seed=1)
    g = d.geometry()
    rng = np.random.default_rng(0)
    w = rng.choice(np.array([-1, 1], dtype=np.int8), size=(g.rows, g.phys_cols))
    x = (rng.random((200, g.rows)) < 0.5).astype(np.uint8)
    d.write_macro(0, w)
    r1, r2 = d.read_macro(0, x), d.read_macro(0, x)
    assert not np.array_equal(r1, r2)
    assert np.abs(r1.astype(int) - r2).mean() < 2  # noise, not a different die
    other = _driver(noise_seed=1)
    other.write_macro(0, w)
    assert np.array_equal(r1, other.read_macro(0, x))


@pytest.mark.parametrize("corner", ["typical", "aggressive"])
def test_readout_follows_the_hidden_variation(corner: str) -> None:
    """Average codes follow the documented model of the oracle truth, column by column: gain times
    the sum with IR drop, saturation, offset, and the ADC's INL bow."""
    d = _driver(noise_seed=3, corner=corner)
    g = d.geometry()
    truth = oracle_die_truth(d.fleet.config, DIE)
    d.write_macro(1, np.ones((g.rows, g.phys_cols), dtype=np.int8))
    x = np.zeros((400, g.rows), dtype=np.uint8)
    x[:, :10] = 1  # ideal sum 10 on every column
    mean = d.read_macro(1, x).astype(float).mean(axis=0)
    lin = (
        (1 + truth.cell_error[1, :10]).sum(axis=0)
        * truth.gain_ratio[1]
        * (1 - truth.ir_drop[1] * 10 / g.rows)
    )
    sat = truth.bl_sat_mac[1]
    v = sat * np.tanh(lin / sat) + truth.offset_mac[1]
    t = np.clip((v - (g.code_min - 0.5)) / g.adc_levels, 0, 1)
    eff = v + truth.inl_bow_lsb[1] * np.sin(np.pi * t)
    eff = np.where(truth.stuck_mask[1, :10].any(axis=0), np.nan, eff)
    live = ~truth.dead_cols[1] & ~np.isnan(eff)
    # Noise 1 MAC over 400 reads plus the ADC's per-edge offsets (0.15 LSB sigma; 0.3 at aggressive).
    atol = 0.2 + d.fleet.config.variation.adc_edge_sigma_lsb
    np.testing.assert_allclose(mean[live], eff[live], atol=atol)


def test_dead_columns_read_constant() -> None:
    fleet = SimulatedFleet(FleetConfig(seed=4, variation=VariationConfig(dead_col_rate=0.05)))
    d = _driver(fleet=fleet)
    truth = oracle_die_truth(fleet.config, DIE)
    m = int(np.flatnonzero(truth.dead_cols.any(axis=1))[0])
    col = int(np.flatnonzero(truth.dead_cols[m])[0])
    x = (np.random.default_rng(0).random((50, 256)) < 0.5).astype(np.uint8)
    codes = d.read_macro(m, x)
    assert np.all(codes[:, col] == truth.dead_code[m, col])


def test_every_fault_knob_raises_its_error() -> None:
    d = SimulatedDriver(p_timeout=1.0)
    d.connect()
    with pytest.raises(HardwareTimeoutError) as e:
        d.probe(DIE)
    assert e.value.op == "probe" and e.value.timeout_s > 0

    d = SimulatedDriver(p_contact_loss=1.0)
    d.connect()
    with pytest.raises(ContactError):
        d.probe(DIE)

    d = SimulatedDriver(p_gross_defect=1.0)
    d.connect()
    with pytest.raises(DieFault):
        d.probe(DIE)


def test_contact_loss_requires_a_new_probe() -> None:
    d = _driver(p_contact_loss=0.0)
    d.fleet = SimulatedFleet(FleetConfig(faults=d.fleet.config.faults.__class__(p_contact_loss=1.0)))
    with pytest.raises(ContactError):
        d.read_macro(0, np.zeros((1, 256), dtype=np.uint8))
    with pytest.raises(NotConnectedError, match="probe"):
        d.read_macro(0, np.zeros((1, 256), dtype=np.uint8))


def test_operations_need_a_connection_and_a_die() -> None:
    d = SimulatedDriver()
    with pytest.raises(NotConnectedError):
        d.probe(DIE)
    d.connect()
    with pytest.raises(NotConnectedError, match="no die"):
        d.read_macro(0, np.zeros((1, 256), dtype=np.uint8))


def test_program_and_run_network(toy_program: NetworkProgram) -> None:
    d = _driver(variation_scale=0.0)
    g = d.geometry()
    image = build_image(toy_program, g, ImageHeader(DIE.ecid, "toy", "1", "0" * 64, "t"))
    data = encode_image(image)
    x = np.random.default_rng(2).normal(size=(8, 1, 12, 12)).astype(np.float32)
    d.program_image(data)
    logits = d.run_network(x)
    ideal = execute_network(image, x, ideal_readout(image.macros, g))
    # Read noise (1 MAC) and cell defects remain at scale 0; predictions mostly agree.
    assert logits.shape == ideal.shape
    assert d.counters.image_programs == 1 and d.counters.inference_vectors == 8
    with pytest.raises(ProtocolError, match="is for"):
        d.program_image(
            encode_image(build_image(toy_program, g, ImageHeader("LOT1-W01-X+000Y+000", "t", "1", "", "")))
        )
    with pytest.raises(ProtocolError, match="rejected"):
        d.program_image(data[:-3])


def test_run_network_without_an_image_is_a_protocol_error() -> None:
    d = _driver()
    with pytest.raises(ProtocolError):
        d.run_network(np.zeros((1, 1, 12, 12), dtype=np.float32))


def test_tester_time_follows_the_timing_model() -> None:
    d = _driver()
    t = d.timing
    before = d.tester_time_s
    d.write_macro(0, np.ones((256, 68), dtype=np.int8))
    d.read_macro(0, np.zeros((1000, 256), dtype=np.uint8))
    assert d.tester_time_s - before == pytest.approx(t.write_macro_s + t.read_call_s + 1000 * t.read_vector_s)
    assert d.counters.read_vectors == 1000 and d.counters.macro_writes == 1


def test_fleet_cache_is_bounded() -> None:
    fleet = SimulatedFleet(cache_dies=2)
    for x in range(5):
        fleet.die(DieAddress("LOT1", 1, x, 0))
    assert len(fleet._cache) == 2


@pytest.mark.parametrize("corner", ["typical", "aggressive"])
def test_read_noise_does_not_grow_with_the_corner_or_the_scale(corner: str) -> None:
    """The spread of repeated reads of one vector is the circuit's ~1 MAC, whatever the corner."""
    g = SimulatedDriver().connect().geometry()
    x = np.zeros((2000, g.rows), dtype=np.uint8)
    x[:, :40] = 1
    w = np.where(np.random.default_rng(1).random((g.rows, g.phys_cols)) < 0.5, -1, 1).astype(np.int8)
    spreads = []
    for scale in (1.0, 5.0):
        d = _driver(noise_seed=2, corner=corner, variation_scale=scale)
        d.write_macro(0, w)
        codes = d.read_macro(0, x).astype(float)
        inside = (codes.min(axis=0) > g.code_min) & (codes.max(axis=0) < g.code_max)
        spreads.append(float(np.median(codes.std(axis=0)[inside])))
    # 1 MAC of noise plus quantization (1/12 LSB^2): sqrt(1 + 1/12) ~ 1.04 LSB, at scale 1 and 5 alike.
    assert spreads[0] == pytest.approx(1.04, abs=0.1) and spreads[1] == pytest.approx(1.04, abs=0.1)


def test_the_corner_is_an_option_and_an_unknown_one_is_refused() -> None:
    from hardware.registry import DriverOptionsError, validate_options

    assert validate_options("simulated", {"corner": "slow"}).corner == "slow"  # type: ignore[attr-defined]
    with pytest.raises(DriverOptionsError, match="unknown process corner 'fast'"):
        validate_options("simulated", {"corner": "fast"})
    with pytest.raises(ValueError, match="unknown process corner"):
        SimulatedDriver(corner="fast")
    info = SimulatedDriver(corner="skewed", variation_scale=2.0).info()
    assert (info.extra["corner"], info.extra["variation_scale"]) == ("skewed", "2")

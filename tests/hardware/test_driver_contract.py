"""The driver contract: every registered driver must pass this suite.

A third party validates its own driver with one command (see docs/drivers.md)::

    CIMCAL_CONTRACT_DRIVER=mytester CIMCAL_CONTRACT_OPTIONS='{"resource": "GPIB0::5"}' \
        CIMCAL_CONTRACT_DIE=LOT1-W01-X+000Y+000 pytest tests/hardware/test_driver_contract.py

Without ``CIMCAL_CONTRACT_DRIVER`` it runs against every driver the ``cimcal.drivers`` entry-point
group registers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np
import pytest

from hardware.chip import ImageHeader, LayerSpec, NetworkProgram, build_image, encode_image
from hardware.driver import DieAddress, Driver, HardwareError, NotConnectedError
from hardware.registry import available_drivers, create_driver

DRIVERS = (
    [os.environ["CIMCAL_CONTRACT_DRIVER"]]
    if os.environ.get("CIMCAL_CONTRACT_DRIVER")
    else available_drivers()
)
OPTIONS = json.loads(os.environ.get("CIMCAL_CONTRACT_OPTIONS", "{}"))
DIE = DieAddress.from_ecid(os.environ.get("CIMCAL_CONTRACT_DIE", "CONTRACT-W01-X+001Y-002"))


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    d = create_driver(request.param, **OPTIONS)
    d.connect(timeout_s=60)
    try:
        yield d
    finally:
        d.close()


def _probed(d: Driver) -> Driver:
    d.probe(DIE)
    return d


def test_connect_is_idempotent_and_close_disconnects(driver: Driver) -> None:
    assert driver.connected
    driver.connect()
    driver.close()
    assert not driver.connected
    with pytest.raises(NotConnectedError):
        driver.probe(DIE)
    with create_driver(driver.name, **OPTIONS) as d2:
        assert d2.connected
    assert not d2.connected


def test_identify_needs_a_die_and_reports_its_address(driver: Driver) -> None:
    with pytest.raises(NotConnectedError):
        driver.identify()
    ident = driver.probe(DIE)
    assert ident.ecid == DIE.ecid and ident.address == DIE
    assert driver.identify(0) == ident


def test_geometry_is_sane(driver: Driver) -> None:
    g = driver.geometry()
    assert g.n_macros >= 1 and g.rows >= 8 and g.cols >= 1 and g.phys_cols >= g.cols
    assert g.code_min < 0 < g.code_max


def test_write_then_read_returns_codes_in_range(driver: Driver) -> None:
    d = _probed(driver)
    g = d.geometry()
    rng = np.random.default_rng(0)
    d.write_macro(0, rng.choice(np.array([-1, 1], dtype=np.int8), size=(g.rows, g.phys_cols)))
    codes = d.read_macro(0, (rng.random((32, g.rows)) < 0.5).astype(np.uint8))
    assert codes.shape == (32, g.phys_cols) and codes.dtype == np.int16
    assert codes.min() >= g.code_min and codes.max() <= g.code_max


def test_read_follows_the_inner_product(driver: Driver) -> None:
    """More active rows of +1 weights give larger codes on a healthy column (monotone transfer)."""
    d = _probed(driver)
    g = d.geometry()
    d.write_macro(0, np.ones((g.rows, g.phys_cols), dtype=np.int8))
    x = np.zeros((2, g.rows), dtype=np.uint8)
    x[1, : min(g.rows, 20)] = 1
    codes = d.read_macro(0, np.repeat(x, 20, axis=0)).reshape(2, 20, -1).mean(axis=1)
    assert np.median(codes[1] - codes[0]) > 5


@pytest.mark.parametrize(
    ("op", "match"),
    [
        ("weights_shape", "shape"),
        ("weights_values", "-1 or \\+1"),
        ("inputs_values", "0 or 1"),
        ("inputs_shape", "shape"),
        ("macro", "outside"),
    ],
)
def test_bad_arguments_are_value_errors(driver: Driver, op: str, match: str) -> None:
    d = _probed(driver)
    g = d.geometry()
    ok_w = np.ones((g.rows, g.phys_cols), dtype=np.int8)
    ok_x = np.zeros((1, g.rows), dtype=np.uint8)
    with pytest.raises(ValueError, match=match):
        if op == "weights_shape":
            d.write_macro(0, ok_w[:-1])
        elif op == "weights_values":
            d.write_macro(0, np.zeros_like(ok_w))
        elif op == "inputs_values":
            d.read_macro(0, ok_x + 2)
        elif op == "inputs_shape":
            d.read_macro(0, ok_x[:, :-1])
        else:
            d.read_macro(g.n_macros, ok_x)


def test_operations_are_counted_in_tester_time(driver: Driver) -> None:
    d = _probed(driver)
    g = d.geometry()
    t0, c0 = d.tester_time_s, d.counters.read_vectors
    d.read_macro(0, np.zeros((10, g.rows), dtype=np.uint8))
    assert d.counters.read_vectors == c0 + 10
    assert d.tester_time_s > t0
    window = d.reset_counters()
    assert window.read_vectors >= 10 and d.counters.read_vectors == 0


def _tiny_program(rows: int) -> NetworkProgram:
    rng = np.random.default_rng(3)
    cin = max(1, min(8, rows // 9))
    return NetworkProgram(
        "contract",
        "1",
        (1, 6, 6),
        ("a", "b"),
        (
            LayerSpec(
                "conv_digital",
                "c0",
                {"stride": [1, 1], "padding": [1, 1]},
                {
                    "weight": rng.normal(size=(cin, 1, 3, 3)).astype(np.float32),
                    "bias": np.zeros(cin, np.float32),
                },
            ),
            LayerSpec(
                "conv_binary",
                "b1",
                {"stride": [1, 1], "padding": [1, 1], "pool": [1, 1], "weight_shape": [4, cin, 3, 3]},
                {
                    "weight": rng.choice(np.array([-1, 1], dtype=np.int8), size=(4, cin, 3, 3)),
                    "threshold": np.zeros(4, np.int32),
                },
            ),
            LayerSpec("avgpool_global", "gap"),
            LayerSpec(
                "dense_digital",
                "fc",
                {},
                {"weight": rng.normal(size=(2, 4)).astype(np.float32), "bias": np.zeros(2, np.float32)},
            ),
        ),
    )


def test_program_image_and_run_network(driver: Driver) -> None:
    d = _probed(driver)
    g = d.geometry()
    image = encode_image(
        build_image(_tiny_program(g.rows), g, ImageHeader(DIE.ecid, "contract", "1", "", ""))
    )
    d.program_image(image)
    logits = d.run_network(np.random.default_rng(0).normal(size=(5, 1, 6, 6)).astype(np.float32))
    assert logits.shape == (5, 2) and logits.dtype == np.float32
    assert d.counters.image_programs == 1


def test_a_corrupted_image_is_refused(driver: Driver) -> None:
    d = _probed(driver)
    g = d.geometry()
    image = encode_image(
        build_image(_tiny_program(g.rows), g, ImageHeader(DIE.ecid, "contract", "1", "", ""))
    )
    with pytest.raises((HardwareError, ValueError)):
        d.program_image(image[:-7])

"""Signature bytes: deterministic, round-trip exactly, and refuse anything corrupted."""

from __future__ import annotations

import struct
from dataclasses import replace

import numpy as np
import pytest

from app.calibration.signature import SIGNATURE_VERSION, Signature, SignatureFormatError, StuckCells
from bench.oracle import oracle_signature
from tests.calibration.conftest import ADDRESS, SMALL, fleet_config


@pytest.fixture
def signature() -> Signature:
    return oracle_signature(fleet_config(2.0, dead_col_rate=0.05, stuck_cell_rate=2e-3), ADDRESS)


def test_bytes_round_trip_exactly_and_deterministically(signature: Signature) -> None:
    blob = signature.to_bytes()
    back = Signature.from_bytes(blob)
    assert back.to_bytes() == blob
    assert back == signature and back.sha256 == signature.sha256
    np.testing.assert_array_equal(back.gain, signature.gain)
    np.testing.assert_array_equal(back.dead_cols, signature.dead_cols)
    np.testing.assert_array_equal(back.stuck.row, signature.stuck.row)
    assert back.cell_error is not None and signature.cell_error is not None
    np.testing.assert_array_equal(back.cell_error, signature.cell_error)
    assert signature.n_dead_cols > 0 and signature.n_stuck_cells > 0
    assert len(blob) == signature.summary()["bytes"]


def test_quantization_keeps_the_physics(signature: Signature) -> None:
    truth = oracle_signature(fleet_config(2.0, dead_col_rate=0.05, stuck_cell_rate=2e-3), ADDRESS)
    assert truth.edge_offset_lsb is not None and signature.edge_offset_lsb is not None
    assert np.abs(signature.edge_offset_lsb - truth.edge_offset_lsb).max() <= 0.5 / 250 + 1e-6


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-1],  # truncated
        lambda b: b[:100],
        lambda b: b"",
        lambda b: b"XXXXXXXX" + b[8:],  # wrong magic
        lambda b: b[:200] + bytes([b[200] ^ 0x01]) + b[201:],  # a flipped bit in the header
        lambda b: b[:-40] + bytes([b[-40] ^ 0x80]) + b[-39:],  # a flipped bit in the payload
        lambda b: b + b"\0",  # padded
    ],
)
def test_corrupted_bytes_are_rejected(signature: Signature, damage: object) -> None:
    with pytest.raises(SignatureFormatError):
        Signature.from_bytes(damage(signature.to_bytes()))  # type: ignore[operator]


def test_other_version_is_rejected(signature: Signature) -> None:
    blob = bytearray(signature.to_bytes())
    struct.pack_into("<H", blob, 8, SIGNATURE_VERSION + 1)
    with pytest.raises(SignatureFormatError, match="version"):
        Signature.from_bytes(bytes(blob))
    assert issubclass(SignatureFormatError, ValueError)


def test_inconsistent_arrays_are_rejected() -> None:
    g = SMALL
    with pytest.raises(SignatureFormatError):
        Signature(
            geometry=g,
            gain=np.ones((g.n_macros, g.phys_cols + 1)),
            offset_mac=np.zeros((g.n_macros, g.phys_cols)),
            noise_sigma_mac=np.ones(g.n_macros),
            cell_sigma=0.06,
            cell_residual_sigma=0.06,
            dead_cols=np.zeros((g.n_macros, g.phys_cols), bool),
            dead_code=np.zeros((g.n_macros, g.phys_cols), np.int16),
            stuck=StuckCells.empty(),
        )


def test_compact_without_cell_errors(signature: Signature) -> None:
    g = SMALL
    lean = Signature(
        geometry=g,
        gain=signature.gain,
        offset_mac=signature.offset_mac,
        noise_sigma_mac=signature.noise_sigma_mac,
        cell_sigma=signature.cell_sigma,
        cell_residual_sigma=signature.cell_sigma,
        dead_cols=signature.dead_cols,
        dead_code=signature.dead_code,
        stuck=signature.stuck,
    )
    # float16 gain and offset per bit line plus sparse defect lists and a JSON header.
    assert lean.nbytes < 4 * g.n_macros * g.phys_cols + 2000
    assert lean.nbytes < signature.nbytes


def test_saturation_and_ir_drop_round_trip_and_are_optional(signature: Signature) -> None:
    g = SMALL
    sat = np.full((g.n_macros, g.phys_cols), 24.0, np.float32)
    sat[0, 0] = np.inf  # a linear bit line is stored as 0
    nl = replace(signature, bl_sat_mac=sat, ir_drop=np.full(g.n_macros, 0.2, np.float32))
    back = Signature.from_bytes(nl.to_bytes())
    assert back == nl and back.bl_sat_mac is not None and back.ir_drop is not None
    assert back.bl_sat_mac[0, 0] == 0.0 and back.bl_sat_mac[0, 1] == 24.0
    np.testing.assert_allclose(back.ir_drop, 0.2, rtol=1e-3)
    assert Signature.from_bytes(signature.to_bytes()).bl_sat_mac is None  # absent stays absent
    assert len(nl.to_bytes()) > len(signature.to_bytes())
    with pytest.raises(SignatureFormatError, match="ir_drop"):
        replace(signature, ir_drop=np.full(g.n_macros, 1.5, np.float32))
    with pytest.raises(SignatureFormatError, match="bl_sat_mac shape"):
        replace(signature, bl_sat_mac=np.ones(3, np.float32))

"""The die signature: what characterization measured about one die, independent of any model.

A :class:`Signature` describes every macro and every physical bit line (data columns and spares) of
one die with the readout model that compensation uses::

    code[m, p] = ADC_mp( sum_r a_r * eff[m, r, p] + offset_mac[m, p] + noise ),  noise ~ N(0, noise_sigma_mac[m]^2)
    eff[m, r, p] = w_r * gain[m, p] * (1 + cell_error[m, r, p])     (a healthy cell written with w_r)
    eff[m, r, p] = stuck_value * stuck_mag                          (a stuck cell, whatever is written)

where ``ADC_mp`` has its decision edge into code ``k`` at ``(k - 0.5 + edge_offset_lsb[m, p, k]) * lsb``
and a dead bit line returns ``dead_code`` whatever it is driven with.

Serialized form (:meth:`Signature.to_bytes`, schema in ``docs/calibration.md``)::

    b"CIMCALSG" | u16 format version | u16 reserved | u32 header length | JSON header | sections | SHA-256

The JSON header (sorted keys, no spaces) holds the geometry, scalars and a section table; sections are
little-endian arrays. Floats are stored as float16 (gain, offset, noise), scaled int8 (edge offsets) or
4-bit levels (cell errors); a :class:`Signature` quantizes on construction, so ``from_bytes(to_bytes(s)) == s`` and
the same signature always gives the same bytes and the same :attr:`Signature.sha256`.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hardware.chip import ChipGeometry, pack_sections

SIGNATURE_VERSION = 1
"""Version of the signature model and byte layout; bumped on any incompatible change."""

SIGNATURE_MAGIC = b"CIMCALSG"
_PREFIX = struct.Struct("<8sHHI")
_DIGEST_BYTES = 32
EDGE_SCALE_LSB = 1.0 / 250.0
"""Quantization step of the stored ADC edge offsets (int8, so +-0.508 LSB is representable)."""
CELL_LEVELS = 7
"""Cell errors are stored as 4-bit signed levels -7..7 in steps of ``cell_sigma / 3`` (two per byte)."""


class SignatureFormatError(ValueError):
    """Signature bytes cannot be decoded: truncated, corrupted, of another version, or inconsistent."""


def _f16(a: NDArray[Any]) -> NDArray[np.float32]:
    return np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)


@dataclass(frozen=True)
class StuckCells:
    """Sparse list of stuck cells.

    macro, row, col : ndarray (n,) of int64
    value           : ndarray (n,) of int8 in {-1, +1} (the value the cell reads as)
    magnitude       : ndarray (n,) of float32, the cell's contribution in MAC units (about the gain)
    """

    macro: NDArray[np.int64]
    row: NDArray[np.int64]
    col: NDArray[np.int64]
    value: NDArray[np.int8]
    magnitude: NDArray[np.float32]

    def __post_init__(self) -> None:
        order = np.lexsort((np.asarray(self.col), np.asarray(self.row), np.asarray(self.macro)))
        object.__setattr__(self, "macro", np.asarray(self.macro, dtype=np.int64)[order])
        object.__setattr__(self, "row", np.asarray(self.row, dtype=np.int64)[order])
        object.__setattr__(self, "col", np.asarray(self.col, dtype=np.int64)[order])
        object.__setattr__(self, "value", np.asarray(self.value, dtype=np.int8)[order])
        object.__setattr__(self, "magnitude", _f16(np.asarray(self.magnitude)[order]))

    def __len__(self) -> int:
        return int(self.macro.size)

    @classmethod
    def empty(cls) -> StuckCells:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z, np.zeros(0, np.int8), np.zeros(0, np.float32))


@dataclass(frozen=True)
class Signature:
    """Measured transfer and defects of one die (see the module docstring for the model).

    gain            : ndarray (n_macros, phys_cols) float32, ratio (1.0 = ideal); 0 for dead columns
    offset_mac      : ndarray (n_macros, phys_cols) float32, MAC units
    noise_sigma_mac : ndarray (n_macros,) float32, read noise per read, MAC units
    edge_offset_lsb : ndarray (n_macros, phys_cols, adc_levels - 1) float32 or None (ideal edges);
                      entry k is the shift of the edge into code ``code_min + 1 + k``, in LSB
    cell_error      : ndarray (n_macros, rows, phys_cols) float32 or None (not resolved): relative
                      error of each cell's contribution (posterior mean)
    cell_sigma      : relative spread of the cell errors on this die (fraction)
    cell_residual_sigma : relative error left after ``cell_error`` (equals ``cell_sigma`` without it)
    dead_cols       : ndarray (n_macros, phys_cols) bool; dead_code int16 (code a dead column returns)
    stuck           : :class:`StuckCells`
    bl_sat_mac      : ndarray (n_macros, phys_cols) float32 or None (linear bit lines): saturation
                      level, the bit line reads ``v_sat * tanh(v / v_sat)`` (0: none)
    ir_drop         : ndarray (n_macros,) float32 or None: fraction of the gain lost with every row
                      active; ``gain`` is then the gain with no row active
    meta            : small JSON-able provenance (ECID, reads, budget...): not used by compensation
    """

    geometry: ChipGeometry
    gain: NDArray[np.float32]
    offset_mac: NDArray[np.float32]
    noise_sigma_mac: NDArray[np.float32]
    cell_sigma: float
    cell_residual_sigma: float
    dead_cols: NDArray[np.bool_]
    dead_code: NDArray[np.int16]
    stuck: StuckCells = field(default_factory=StuckCells.empty)
    edge_offset_lsb: NDArray[np.float32] | None = None
    cell_error: NDArray[np.float32] | None = None
    bl_sat_mac: NDArray[np.float32] | None = None
    ir_drop: NDArray[np.float32] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        g = self.geometry
        mp = (g.n_macros, g.phys_cols)
        set_ = object.__setattr__
        set_(self, "gain", _f16(self.gain))
        set_(self, "offset_mac", _f16(self.offset_mac))
        set_(self, "noise_sigma_mac", _f16(self.noise_sigma_mac))
        set_(self, "cell_sigma", float(np.float16(self.cell_sigma)))
        set_(self, "cell_residual_sigma", float(np.float16(self.cell_residual_sigma)))
        set_(self, "dead_cols", np.asarray(self.dead_cols, dtype=bool))
        set_(self, "dead_code", np.where(self.dead_cols, self.dead_code, 0).astype(np.int16))
        if self.edge_offset_lsb is not None:
            q = np.clip(np.rint(np.asarray(self.edge_offset_lsb, np.float64) / EDGE_SCALE_LSB), -127, 127)
            set_(self, "edge_offset_lsb", (q * EDGE_SCALE_LSB).astype(np.float32))
        if self.cell_error is not None:
            step = _cell_step(self.cell_sigma)
            q = np.clip(np.rint(np.asarray(self.cell_error, np.float64) / step), -CELL_LEVELS, CELL_LEVELS)
            set_(self, "cell_error", (q * step).astype(np.float32))
        if self.bl_sat_mac is not None:
            sat = np.where(np.isfinite(self.bl_sat_mac), self.bl_sat_mac, 0.0)
            set_(self, "bl_sat_mac", _f16(sat))
        if self.ir_drop is not None:
            set_(self, "ir_drop", _f16(self.ir_drop))
        set_(self, "meta", json.loads(json.dumps(dict(self.meta), sort_keys=True)))
        checks = [
            (self.bl_sat_mac is None or self.bl_sat_mac.shape == mp, "bl_sat_mac shape"),
            (self.bl_sat_mac is None or bool(np.all(self.bl_sat_mac >= 0)), "negative bl_sat_mac"),
            (self.ir_drop is None or self.ir_drop.shape == (g.n_macros,), "ir_drop must be (n_macros,)"),
            (self.ir_drop is None or bool(np.all((self.ir_drop >= 0) & (self.ir_drop < 1))), "ir_drop range"),
            (self.gain.shape == mp, f"gain shape {self.gain.shape} != {mp}"),
            (self.offset_mac.shape == mp, f"offset shape {self.offset_mac.shape} != {mp}"),
            (self.noise_sigma_mac.shape == (g.n_macros,), "noise_sigma_mac must be (n_macros,)"),
            (self.dead_cols.shape == mp, "dead_cols shape"),
            (self.dead_code.shape == mp, "dead_code shape"),
            (
                self.edge_offset_lsb is None or self.edge_offset_lsb.shape == (*mp, g.adc_levels - 1),
                "edge_offset_lsb shape",
            ),
            (
                self.cell_error is None or self.cell_error.shape == (g.n_macros, g.rows, g.phys_cols),
                "cell_error shape",
            ),
            (bool(np.all(np.isfinite(self.gain)) and np.all(np.isfinite(self.offset_mac))), "non-finite"),
            (bool(np.all(self.noise_sigma_mac >= 0)), "negative noise sigma"),
            (math.isfinite(self.cell_sigma) and self.cell_sigma >= 0, "bad cell_sigma"),
            (bool(np.all((self.stuck.value == 1) | (self.stuck.value == -1))), "stuck values must be +-1"),
            (
                len(self.stuck) == 0
                or (
                    int(self.stuck.macro.max()) < g.n_macros
                    and int(self.stuck.row.max()) < g.rows
                    and int(self.stuck.col.max()) < g.phys_cols
                    and int(min(self.stuck.macro.min(), self.stuck.row.min(), self.stuck.col.min())) >= 0
                ),
                "stuck cell outside the geometry",
            ),
        ]
        for ok, why in checks:
            if not ok:
                raise SignatureFormatError(f"inconsistent signature: {why}")

    # ------------------------------------------------------------------------------ derived views
    @property
    def n_dead_cols(self) -> int:
        return int(self.dead_cols.sum())

    @property
    def n_stuck_cells(self) -> int:
        return len(self.stuck)

    @property
    def has_cell_error(self) -> bool:
        return self.cell_error is not None

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of :meth:`to_bytes`: the key a weight image records as its signature hash."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def nbytes(self) -> int:
        return len(self.to_bytes())

    def edges_mac(self) -> NDArray[np.float32]:
        """Decision edges (n_macros, phys_cols, adc_levels - 1) in MAC units: edge k enters code_min+1+k."""
        g = self.geometry
        k = np.arange(g.code_min + 1, g.code_max + 1, dtype=np.float32)
        e = np.zeros((g.n_macros, g.phys_cols, g.adc_levels - 1), np.float32)
        if self.edge_offset_lsb is not None:
            e = self.edge_offset_lsb
        return ((k[None, None, :] - 0.5 + e) * g.adc_lsb_mac).astype(np.float32)

    def effective_cells(self, macro: int, weights: NDArray[np.int8]) -> NDArray[np.float32]:
        """Predicted contribution (rows, phys_cols) float32 of each cell of ``macro`` written with ``weights``."""
        w = np.asarray(weights, dtype=np.float32)
        rel = 1.0 if self.cell_error is None else 1.0 + self.cell_error[macro]
        eff = w * rel * self.gain[macro][None, :]
        sel = self.stuck.macro == macro
        if np.any(sel):
            eff[self.stuck.row[sel], self.stuck.col[sel]] = (
                self.stuck.value[sel].astype(np.float32) * self.stuck.magnitude[sel]
            )
        eff[:, self.dead_cols[macro]] = 0.0
        return np.asarray(eff, dtype=np.float32)

    def summary(self) -> dict[str, float | int]:
        """Headline numbers of the die (live columns only), for dashboards and the database."""
        live = ~self.dead_cols
        gains, offs = self.gain[live], self.offset_mac[live]
        return {
            "gain_mean": float(gains.mean()) if gains.size else 0.0,
            "gain_spread": float(gains.std()) if gains.size else 0.0,
            "offset_mean_mac": float(offs.mean()) if offs.size else 0.0,
            "offset_spread_mac": float(offs.std()) if offs.size else 0.0,
            "noise_sigma_mac": float(self.noise_sigma_mac.mean()),
            "cell_sigma": float(self.cell_sigma),
            "n_dead_cols": self.n_dead_cols,
            "n_stuck_cells": self.n_stuck_cells,
            "has_cell_error": int(self.has_cell_error),
            "bytes": self.nbytes,
        }

    # ------------------------------------------------------------------------------ serialization
    def to_bytes(self) -> bytes:
        """Deterministic serialization (documented in ``docs/calibration.md``)."""
        g = self.geometry
        sections: list[tuple[str, NDArray[Any]]] = [
            ("gain", self.gain.astype("<f2")),
            ("offset_mac", self.offset_mac.astype("<f2")),
            ("noise_sigma_mac", self.noise_sigma_mac.astype("<f2")),
        ]
        dead = np.flatnonzero(self.dead_cols.reshape(-1))
        sections.append(("dead/index", dead.astype("<u4")))
        sections.append(("dead/code", self.dead_code.reshape(-1)[dead].astype("<i2")))
        s = self.stuck
        flat = (s.macro * g.rows + s.row) * g.phys_cols + s.col
        sections.append(("stuck/index", flat.astype("<u4")))
        sections.append(("stuck/value", s.value.astype("i1")))
        sections.append(("stuck/magnitude", s.magnitude.astype("<f2")))
        if self.edge_offset_lsb is not None:
            sections.append(("edge_offset", np.rint(self.edge_offset_lsb / EDGE_SCALE_LSB).astype("i1")))
        if self.cell_error is not None:
            q = np.rint(self.cell_error / _cell_step(self.cell_sigma)).astype(np.int16).reshape(-1) + 8
            if q.size % 2:
                q = np.concatenate([q, np.zeros(1, np.int16)])
            sections.append(("cell_error_q4", (q[0::2] | (q[1::2] << 4)).astype("u1")))
        if self.bl_sat_mac is not None:
            sections.append(("bl_sat_mac", self.bl_sat_mac.astype("<f2")))
        if self.ir_drop is not None:
            sections.append(("ir_drop", self.ir_drop.astype("<f2")))
        table, payload = pack_sections(sections)
        header = {
            "signature_version": SIGNATURE_VERSION,
            "geometry": g.as_dict(),
            "cell_sigma": float(self.cell_sigma),
            "cell_residual_sigma": float(self.cell_residual_sigma),
            "edge_scale_lsb": EDGE_SCALE_LSB,
            "meta": self.meta,
            "sections": table,
        }
        hjson = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        body = _PREFIX.pack(SIGNATURE_MAGIC, SIGNATURE_VERSION, 0, len(hjson)) + hjson + payload
        return body + hashlib.sha256(body).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> Signature:
        """Parse and verify; raises :class:`SignatureFormatError` with the reason on any defect."""
        data = bytes(data)
        if len(data) < _PREFIX.size + _DIGEST_BYTES:
            raise SignatureFormatError(f"signature truncated: {len(data)} bytes")
        magic, version, _, hlen = _PREFIX.unpack_from(data)
        if magic != SIGNATURE_MAGIC:
            raise SignatureFormatError(f"not a cimcal signature (magic {magic!r})")
        if version != SIGNATURE_VERSION:
            raise SignatureFormatError(
                f"unsupported signature version {version} (this build reads {SIGNATURE_VERSION})"
            )
        body, digest = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
        if hashlib.sha256(body).digest() != digest:
            raise SignatureFormatError("signature SHA-256 mismatch: the bytes are truncated or corrupted")
        try:
            header = json.loads(body[_PREFIX.size : _PREFIX.size + hlen])
            return cls._from_parts(header, body[_PREFIX.size + hlen :])
        except SignatureFormatError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise SignatureFormatError(f"signature content is inconsistent: {e}") from e

    @classmethod
    def _from_parts(cls, header: dict[str, Any], payload: bytes) -> Signature:
        g = ChipGeometry.from_dict(header["geometry"])
        arrays: dict[str, NDArray[Any]] = {}
        end = 0
        for s in header["sections"]:
            off, nb = int(s["offset"]), int(s["nbytes"])
            dt = np.dtype(s["dtype"])
            if dt.kind not in "iuf" or off < 0 or off + nb > len(payload):
                raise SignatureFormatError(f"section {s['name']!r} is out of bounds or of a bad dtype")
            arr = np.frombuffer(payload[off : off + nb], dtype=dt)
            arrays[s["name"]] = arr.reshape([int(v) for v in s["shape"]])
            end = max(end, off + nb)
        if end != len(payload):
            raise SignatureFormatError("signature payload length does not match its section table")
        mp = (g.n_macros, g.phys_cols)
        n_cols = g.n_macros * g.phys_cols
        dead_idx = arrays["dead/index"].astype(np.int64)
        if dead_idx.size and (dead_idx.min() < 0 or dead_idx.max() >= n_cols):
            raise SignatureFormatError("dead column index outside the geometry")
        dead = np.zeros(n_cols, bool)
        dead[dead_idx] = True
        dead_code = np.zeros(n_cols, np.int16)
        dead_code[dead_idx] = arrays["dead/code"].astype(np.int16)
        flat = arrays["stuck/index"].astype(np.int64)
        if flat.size and flat.max() >= g.n_macros * g.rows * g.phys_cols:
            raise SignatureFormatError("stuck cell index outside the geometry")
        macro, rest = np.divmod(flat, g.rows * g.phys_cols)
        row, col = np.divmod(rest, g.phys_cols)
        cell_sigma = float(header["cell_sigma"])
        edges = arrays.get("edge_offset")
        cells = arrays.get("cell_error_q4")
        sat = arrays.get("bl_sat_mac")
        ir = arrays.get("ir_drop")
        if cells is not None:
            n_cells = g.n_macros * g.rows * g.phys_cols
            nib = np.stack([cells & 0x0F, cells >> 4], axis=1).reshape(-1)[:n_cells].astype(np.int16)
            if nib.size != n_cells or np.any(nib == 0):
                raise SignatureFormatError("cell error section is truncated or holds invalid levels")
            cells = nib - 8
        return cls(
            geometry=g,
            gain=arrays["gain"].astype(np.float32).reshape(mp),
            offset_mac=arrays["offset_mac"].astype(np.float32).reshape(mp),
            noise_sigma_mac=arrays["noise_sigma_mac"].astype(np.float32).reshape(g.n_macros),
            cell_sigma=cell_sigma,
            cell_residual_sigma=float(header["cell_residual_sigma"]),
            dead_cols=dead.reshape(mp),
            dead_code=dead_code.reshape(mp),
            stuck=StuckCells(
                macro,
                row,
                col,
                arrays["stuck/value"].astype(np.int8),
                arrays["stuck/magnitude"].astype(np.float32),
            ),
            edge_offset_lsb=None
            if edges is None
            else (edges.astype(np.float32) * float(header["edge_scale_lsb"])).reshape(*mp, g.adc_levels - 1),
            cell_error=None
            if cells is None
            else (cells.astype(np.float32) * _cell_step(cell_sigma)).reshape(g.n_macros, g.rows, g.phys_cols),
            bl_sat_mac=None if sat is None else sat.astype(np.float32).reshape(mp),
            ir_drop=None if ir is None else ir.astype(np.float32).reshape(g.n_macros),
            meta=header.get("meta", {}),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signature) and self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.sha256)


def _cell_step(cell_sigma: float) -> float:
    """Step of the stored cell errors: a third of the die's cell spread (levels -7..7: +-2.3 sigma).

    Cell errors are posterior means, shrunk towards 0, so few reach the outer levels; the rounding
    error (0.1 sigma rms) is far below their posterior uncertainty.
    """
    return max(float(np.float16(cell_sigma)), 1e-3) / 3.0

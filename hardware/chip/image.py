"""The weight image: its header, its validation, and its byte encoding (``docs/weight-image.md``)."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hardware.chip.geometry import BINARY_KINDS, ChipError, ChipGeometry, LayerSpec, NetworkProgram
from hardware.chip.mapping import Tile, ideal_threshold_codes, identity_col_map, map_network, place_weights

IMAGE_MAGIC = b"CIMCALWI"
IMAGE_FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sHHI")  # magic, format version, reserved, header length
_DIGEST_BYTES = 32


class ImageFormatError(ValueError):
    """A weight image cannot be decoded: truncated, corrupted, or of an unknown format."""


# ------------------------------------------------------------------------------------------ the image
@dataclass(frozen=True)
class ImageHeader:
    ecid: str
    model_name: str
    model_version: str
    signature_hash: str
    algorithm_version: str


@dataclass(frozen=True)
class WeightImage:
    """Everything one die needs to run one model.

    ``macros`` int8 (n_macros, rows, phys_cols) in {-1,+1}; ``col_map`` int16 (n_macros, cols): the
    physical bit line read for each logical column; ``thresholds`` int32 (Cout,) per binary layer,
    in ADC codes summed over row tiles; ``program`` holds the topology and the digital layers (binary
    layers without weights).
    """

    header: ImageHeader
    geometry: ChipGeometry
    program: NetworkProgram
    tiles: tuple[Tile, ...]
    macros: NDArray[np.int8]
    col_map: NDArray[np.int16]
    thresholds: Mapping[str, NDArray[np.int32]]

    @property
    def used_macros(self) -> list[int]:
        return sorted({t.macro for t in self.tiles})

    def validate(self) -> None:
        g = self.geometry
        if self.macros.shape != (g.n_macros, g.rows, g.phys_cols):
            raise ChipError(f"macros shape {self.macros.shape} does not match the geometry")
        if not np.all((self.macros == 1) | (self.macros == -1)):
            raise ChipError("macro contents must be -1 or +1")
        if self.col_map.shape != (g.n_macros, g.cols):
            raise ChipError(f"col_map shape {self.col_map.shape} does not match the geometry")
        if self.col_map.size and (self.col_map.min() < 0 or self.col_map.max() >= g.phys_cols):
            raise ChipError("col_map points outside the physical columns")
        for m in range(g.n_macros):
            if len(np.unique(self.col_map[m])) != g.cols:
                raise ChipError(f"col_map of macro {m} routes two logical columns to one bit line")
        for layer in self.program.binary_layers():
            thr = self.thresholds.get(layer.name)
            if thr is None or thr.shape != (layer.n_out,):
                raise ChipError(f"layer {layer.name}: thresholds missing or of the wrong shape")
        for t in self.tiles:
            if not 0 <= t.macro < g.n_macros or t.n_rows > g.rows or t.n_cols > g.cols:
                raise ChipError(f"tile {t} does not fit the geometry")
        # One tile per macro: re-reading a macro would average read noise that no tester time paid for.
        if len({t.macro for t in self.tiles}) != len(self.tiles):
            raise ChipError("two tiles share a macro")


def strip_binary_weights(program: NetworkProgram) -> NetworkProgram:
    """The program as stored in an image: binary layers keep their shape, not their weights."""
    layers = tuple(replace(layer, arrays={}) if layer.is_binary else layer for layer in program.layers)
    return replace(program, layers=layers)


def build_image(
    program: NetworkProgram,
    geometry: ChipGeometry,
    header: ImageHeader,
    *,
    macros: NDArray[np.int8] | None = None,
    col_map: NDArray[np.int16] | None = None,
    thresholds: Mapping[str, NDArray[np.int32]] | None = None,
) -> WeightImage:
    """An image for ``program``; without overrides it is the ideal (uncalibrated) image."""
    tiles = map_network(program, geometry)
    image = WeightImage(
        header=header,
        geometry=geometry,
        program=strip_binary_weights(program),
        tiles=tiles,
        macros=place_weights(program, tiles, geometry)
        if macros is None
        else np.asarray(macros, dtype=np.int8),
        col_map=identity_col_map(geometry) if col_map is None else np.asarray(col_map, dtype=np.int16),
        thresholds={
            k: np.asarray(v, dtype=np.int32)
            for k, v in (
                ideal_threshold_codes(program, geometry) if thresholds is None else thresholds
            ).items()
        },
    )
    image.validate()
    return image


def _layer_json(layer: LayerSpec) -> dict[str, Any]:
    return {"kind": layer.kind, "name": layer.name, "attrs": _jsonable(dict(layer.attrs))}


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def pack_sections(sections: Sequence[tuple[str, NDArray[Any]]]) -> tuple[list[dict[str, Any]], bytes]:
    """The section table (name, dtype, shape, offset, nbytes) and the concatenated raw bytes.

    Shared by every cimcal binary container (weight images, signatures).
    """
    table: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    offset = 0
    for name, arr in sections:
        raw = np.ascontiguousarray(arr).tobytes()
        table.append(
            {
                "name": name,
                "dtype": arr.dtype.str,
                "shape": list(arr.shape),
                "offset": offset,
                "nbytes": len(raw),
            }
        )
        blobs.append(raw)
        offset += len(raw)
    return table, b"".join(blobs)


def encode_image(image: WeightImage) -> bytes:
    """Serialize an image: prefix, JSON header, little-endian sections, trailing SHA-256.

    Deterministic: the same image always gives the same bytes.
    """
    image.validate()
    sections: list[tuple[str, NDArray[Any]]] = [
        ("macros", np.packbits((image.macros == 1).reshape(-1), bitorder="little")),
        ("col_map", image.col_map.astype("<i2")),
    ]
    for layer in image.program.binary_layers():
        sections.append((f"threshold/{layer.name}", np.asarray(image.thresholds[layer.name]).astype("<i4")))
    for layer in image.program.layers:
        if layer.is_binary:
            continue
        for key in sorted(layer.arrays):
            sections.append((f"{layer.name}/{key}", np.asarray(layer.arrays[key]).astype("<f4")))
    table, payload = pack_sections(sections)
    header = {
        "ecid": image.header.ecid,
        "model": {"name": image.header.model_name, "version": image.header.model_version},
        "signature_hash": image.header.signature_hash,
        "algorithm_version": image.header.algorithm_version,
        "geometry": image.geometry.as_dict(),
        "program": {
            "name": image.program.name,
            "version": image.program.version,
            "input_shape": list(image.program.input_shape),
            "class_names": list(image.program.class_names),
            "layers": [_layer_json(layer) for layer in image.program.layers],
        },
        "tiles": [t.as_list() for t in image.tiles],
        "sections": table,
    }
    hjson = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = _PREFIX.pack(IMAGE_MAGIC, IMAGE_FORMAT_VERSION, 0, len(hjson)) + hjson + payload
    return body + hashlib.sha256(body).digest()


def decode_image(data: bytes) -> WeightImage:
    """Parse and verify an image; raises :class:`ImageFormatError` with the reason on any defect."""
    data = bytes(data)
    if len(data) < _PREFIX.size + _DIGEST_BYTES:
        raise ImageFormatError(
            f"image truncated: {len(data)} bytes is shorter than the fixed prefix and digest"
        )
    magic, version, _, hlen = _PREFIX.unpack_from(data)
    if magic != IMAGE_MAGIC:
        raise ImageFormatError(f"not a cimcal weight image (magic {magic!r})")
    if version != IMAGE_FORMAT_VERSION:
        raise ImageFormatError(
            f"unsupported image format version {version} (this build reads {IMAGE_FORMAT_VERSION})"
        )
    body, digest = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
    declared = _declared_length(body, hlen)
    if declared is not None and declared != len(data):
        raise ImageFormatError(
            f"image truncated or padded: {len(data)} bytes, its header declares {declared}"
        )
    if hashlib.sha256(body).digest() != digest:
        raise ImageFormatError("image SHA-256 mismatch: the image is corrupted")
    try:
        header = json.loads(body[_PREFIX.size : _PREFIX.size + hlen])
    except ValueError as e:
        raise ImageFormatError(f"image header is not valid JSON: {e}") from e
    payload = body[_PREFIX.size + hlen :]
    try:
        return _image_from_header(header, payload)
    except (KeyError, TypeError, ValueError) as e:
        raise ImageFormatError(f"image content is inconsistent: {e}") from e


def _declared_length(body: bytes, hlen: int) -> int | None:
    """Total image length the header declares, or None where the header cannot be read."""
    try:
        header = json.loads(body[_PREFIX.size : _PREFIX.size + hlen])
        return _PREFIX.size + hlen + sum(int(s["nbytes"]) for s in header["sections"]) + _DIGEST_BYTES
    except (ValueError, KeyError, TypeError):
        return None


def _image_from_header(header: dict[str, Any], payload: bytes) -> WeightImage:
    geometry = ChipGeometry.from_dict(header["geometry"])
    arrays: dict[str, NDArray[Any]] = {}
    for s in header["sections"]:
        raw = payload[int(s["offset"]) : int(s["offset"]) + int(s["nbytes"])]
        arrays[s["name"]] = np.frombuffer(raw, dtype=np.dtype(s["dtype"])).reshape(s["shape"])
    n_bits = geometry.n_macros * geometry.rows * geometry.phys_cols
    bits = np.unpackbits(arrays["macros"], bitorder="little", count=n_bits)
    macros = np.where(bits.reshape(geometry.n_macros, geometry.rows, geometry.phys_cols) == 1, 1, -1).astype(
        np.int8
    )
    p = header["program"]
    layers = []
    for lj in p["layers"]:
        layer_arrays = {
            key.split("/", 1)[1]: arr.astype(np.float32)
            for key, arr in arrays.items()
            if key.startswith(lj["name"] + "/") and lj["kind"] not in BINARY_KINDS
        }
        layers.append(LayerSpec(lj["kind"], lj["name"], lj["attrs"], layer_arrays))
    program = NetworkProgram(
        p["name"],
        p["version"],
        tuple(int(v) for v in p["input_shape"]),
        tuple(p["class_names"]),
        tuple(layers),
    )
    image = WeightImage(
        header=ImageHeader(
            ecid=header["ecid"],
            model_name=header["model"]["name"],
            model_version=header["model"]["version"],
            signature_hash=header["signature_hash"],
            algorithm_version=header["algorithm_version"],
        ),
        geometry=geometry,
        program=program,
        tiles=tuple(Tile.from_list(t) for t in header["tiles"]),
        macros=macros,
        col_map=arrays["col_map"].astype(np.int16),
        thresholds={
            layer.name: arrays[f"threshold/{layer.name}"].astype(np.int32)
            for layer in program.binary_layers()
        },
    )
    image.validate()
    return image


def image_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

"""Model-level activation statistics: computed once per model from a calibration set, never per die.

For every binary layer the ideal chip (no variation) is run on the calibration features and the
{0,1} input patches of the layer are tapped. From them we keep:

* ``p_row`` (K,): the probability that each input bit (row) is 1 (importance of each weight);
* a *pool* of patches (a uniform sample of all patches of the calibration set);
* per output channel, a stratified sample of pool patches: strata by the distance of the ideal code
  sum from the channel's threshold, so the patches whose decision a die could flip are well
  represented, with weights that keep the sample unbiased for the pool. For each sampled patch:
  its ideal decision, its ideal partial sum per row tile, and its number of active rows per tile.

Compensation predicts, through a die's signature, how each sampled patch would be decided on that die
and picks per-channel thresholds that maximise agreement with the ideal decisions.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

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

STATS_VERSION = 2
STRATA_EDGES = (0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, math.inf)
"""Strata of |ideal code sum - threshold + 0.5| (codes) for the per-channel patch samples."""


class StatsFormatError(ValueError):
    """Serialized activation statistics cannot be decoded or belong to another program."""


def program_fingerprint(program: NetworkProgram) -> str:
    """SHA-256 over the program's topology, weights and thresholds (what compensation depends on)."""
    h = hashlib.sha256()
    h.update(json.dumps([program.name, program.version, list(program.input_shape)], sort_keys=True).encode())
    for layer in program.layers:
        h.update(json.dumps([layer.kind, layer.name, _jsonable(dict(layer.attrs))], sort_keys=True).encode())
        for key in sorted(layer.arrays):
            arr = np.ascontiguousarray(layer.arrays[key])
            h.update(key.encode() + arr.dtype.str.encode() + str(arr.shape).encode() + arr.tobytes())
    return h.hexdigest()


def _jsonable(v: object) -> object:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


@dataclass(frozen=True)
class LayerStats:
    """Statistics of one binary layer (K rows, C output channels, n_rt row tiles, n samples per channel).

    p_row      : (K,) float32, P(input bit = 1)
    threshold  : (C,) int32, ideal threshold in ADC codes (summed over row tiles)
    row_tiles  : (n_rt, 2) int64, [row_start, n_rows] of each row tile
    sample_idx : (C, n) int32, indices of the sampled patches in ``pool``
    weight     : (C, n) float32, sample weights (sum to 1 per channel)
    ideal      : (C, n) bool, the ideal chip's decision
    tile_sum   : (C, n, n_rt) int16, ideal (unclipped) partial sum of each row tile
    tile_active: (C, n, n_rt) int16, number of active rows of each row tile
    pool       : (P, K) uint8 in {0,1}, the patch pool
    """

    name: str
    p_row: NDArray[np.float32]
    threshold: NDArray[np.int32]
    row_tiles: NDArray[np.int64]
    sample_idx: NDArray[np.int32]
    weight: NDArray[np.float32]
    ideal: NDArray[np.bool_]
    tile_sum: NDArray[np.int16]
    tile_active: NDArray[np.int16]
    pool: NDArray[np.uint8]

    @property
    def n_out(self) -> int:
        return int(self.threshold.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.p_row.shape[0])


@dataclass(frozen=True)
class ActivationStats:
    """Activation statistics of every binary layer of one program on one calibration set."""

    program_sha256: str
    geometry: ChipGeometry
    layers: Mapping[str, LayerStats]
    n_calib: int

    @classmethod
    def from_program(
        cls,
        program: NetworkProgram,
        features: NDArray[np.float32],
        *,
        geometry: ChipGeometry | None = None,
        pool_size: int = 2048,
        samples_per_channel: int = 256,
        batch: int = 64,
        seed: int = 0,
    ) -> ActivationStats:
        """Run the ideal chip on ``features`` (N, *input_shape) float32 and collect the statistics.

        ``pool_size`` patches per layer are kept (uniformly sampled); ``samples_per_channel`` of them
        are drawn per channel (stratified). Deterministic in ``seed``.
        """
        geometry = geometry or ChipGeometry()
        feats = np.asarray(features, dtype=np.float32)
        if feats.ndim != len(program.input_shape) + 1 or feats.shape[0] == 0:
            raise ValueError(f"features shape {feats.shape}: expected a non-empty (N, *input_shape) batch")
        image = build_image(program, geometry, ImageHeader("", program.name, program.version, "", "stats"))
        readout = ideal_readout(image.macros, geometry)
        binary = program.binary_layers()
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A7]))
        counts = {layer.name: np.zeros(layer.n_rows, np.float64) for layer in binary}
        seen = dict.fromkeys(counts, 0)
        chunks: dict[str, list[NDArray[np.uint8]]] = {name: [] for name in counts}
        n = feats.shape[0]

        def tap(name: str, x: NDArray[np.uint8]) -> None:
            counts[name] += x.sum(axis=0, dtype=np.float64)
            seen[name] += x.shape[0]
            # Keep a uniform share of every batch so the pool is a uniform sample of all patches.
            keep = min(x.shape[0], math.ceil(pool_size * x.shape[0] / max(1, n_patches_hint[name])))
            chunks[name].append(x[np.sort(rng.choice(x.shape[0], size=keep, replace=False))])

        # Patches per feature map differ per layer; one ideal pass on a single map tells how many.
        n_patches_hint: dict[str, int] = dict.fromkeys(counts, 1)
        probe: dict[str, int] = {}
        execute_network(image, feats[:1], readout, tap=lambda name, x: probe.__setitem__(name, x.shape[0]))
        n_patches_hint = {name: probe[name] * n for name in counts}
        for start in range(0, n, batch):
            execute_network(image, feats[start : start + batch], readout, tap=tap)

        layers: dict[str, LayerStats] = {}
        for layer in binary:
            pool = np.concatenate(chunks[layer.name])
            if pool.shape[0] > pool_size:
                pool = pool[np.sort(rng.choice(pool.shape[0], size=pool_size, replace=False))]
            layers[layer.name] = _layer_stats(
                layer,
                pool,
                (counts[layer.name] / max(1, seen[layer.name])).astype(np.float32),
                geometry,
                samples_per_channel,
                rng,
            )
        return cls(program_fingerprint(program), geometry, layers, n)

    # ---------------------------------------------------------------------------- serialization
    def to_bytes(self) -> bytes:
        """npz (no pickles) of every array plus a JSON manifest."""
        arrays: dict[str, NDArray[np.generic]] = {}
        manifest = {
            "stats_version": STATS_VERSION,
            "program_sha256": self.program_sha256,
            "geometry": self.geometry.as_dict(),
            "n_calib": self.n_calib,
            "layers": list(self.layers),
        }
        arrays["manifest"] = np.frombuffer(json.dumps(manifest, sort_keys=True).encode(), dtype=np.uint8)
        for name, ls in self.layers.items():
            for key in (
                "p_row",
                "threshold",
                "row_tiles",
                "sample_idx",
                "weight",
                "ideal",
                "tile_sum",
                "tile_active",
            ):
                arrays[f"{name}/{key}"] = np.asarray(getattr(ls, key))
            arrays[f"{name}/pool_bits"] = np.packbits(ls.pool, axis=1)
            arrays[f"{name}/pool_shape"] = np.asarray(ls.pool.shape, dtype=np.int64)
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=False, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, program: NetworkProgram | None = None) -> ActivationStats:
        """Load stats; with ``program`` given, verify they were computed for that very program."""
        try:
            with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as z:
                manifest = json.loads(bytes(z["manifest"]).decode())
                if manifest["stats_version"] != STATS_VERSION:
                    raise StatsFormatError(
                        f"activation stats version {manifest['stats_version']} unsupported"
                    )
                layers: dict[str, LayerStats] = {}
                for name in manifest["layers"]:
                    shape = tuple(int(v) for v in z[f"{name}/pool_shape"])
                    pool = np.unpackbits(z[f"{name}/pool_bits"], axis=1, count=shape[1]).astype(np.uint8)
                    layers[name] = LayerStats(
                        name=name,
                        p_row=z[f"{name}/p_row"],
                        threshold=z[f"{name}/threshold"],
                        row_tiles=z[f"{name}/row_tiles"],
                        sample_idx=z[f"{name}/sample_idx"],
                        weight=z[f"{name}/weight"],
                        ideal=z[f"{name}/ideal"],
                        tile_sum=z[f"{name}/tile_sum"],
                        tile_active=z[f"{name}/tile_active"],
                        pool=pool,
                    )
        except StatsFormatError:
            raise
        except (OSError, KeyError, ValueError, EOFError) as e:
            raise StatsFormatError(f"activation stats cannot be decoded: {e}") from e
        stats = cls(
            manifest["program_sha256"],
            ChipGeometry.from_dict(manifest["geometry"]),
            layers,
            manifest["n_calib"],
        )
        if program is not None and program_fingerprint(program) != stats.program_sha256:
            raise StatsFormatError("activation stats were computed for another program (fingerprint differs)")
        return stats


def _layer_stats(
    layer: LayerSpec,
    pool: NDArray[np.uint8],
    p_row: NDArray[np.float32],
    geometry: ChipGeometry,
    n_sample: int,
    rng: np.random.Generator,
) -> LayerStats:
    wm = layer.weight_matrix().astype(np.float32)  # (K, C)
    k = layer.n_rows
    row_tiles = np.array(
        [[r0, min(geometry.rows, k - r0)] for r0 in range(0, k, geometry.rows)], dtype=np.int64
    )
    pf = pool.astype(np.float32)
    sums = np.stack([pf[:, r0 : r0 + nr] @ wm[r0 : r0 + nr] for r0, nr in row_tiles], axis=-1)  # (P, C, n_rt)
    active = np.stack([pf[:, r0 : r0 + nr].sum(axis=1) for r0, nr in row_tiles], axis=-1)  # (P, n_rt)
    threshold = np.ceil(np.asarray(layer.arrays["threshold"], np.float64) / geometry.adc_lsb_mac).astype(
        np.int32
    )
    total = geometry.ideal_codes(sums).astype(np.int64).sum(axis=-1)  # (P, C)
    ideal = total >= threshold[None, :]
    dist = np.abs(total - threshold[None, :] + 0.5)
    n_pool = pool.shape[0]
    n = min(n_sample, n_pool)
    c_out = layer.n_out
    idx = np.zeros((c_out, n), np.int32)
    wts = np.zeros((c_out, n), np.float32)
    strata = np.digitize(dist, STRATA_EDGES[1:-1])  # (P, C) in 0..n_strata-1
    n_strata = len(STRATA_EDGES) - 1
    for c in range(c_out):
        members = [np.flatnonzero(strata[:, c] == s) for s in range(n_strata)]
        take = _allocate([m.size for m in members], n)
        chosen, weights = [], []
        for m, t in zip(members, take, strict=True):
            if t == 0:
                continue
            pick = m if t == m.size else rng.choice(m, size=t, replace=False)
            chosen.append(np.sort(pick))
            weights.append(np.full(t, m.size / t / n_pool, np.float32))
        idx[c] = np.concatenate(chosen)
        wts[c] = np.concatenate(weights)
    return LayerStats(
        name=layer.name,
        p_row=p_row,
        threshold=threshold,
        row_tiles=row_tiles,
        sample_idx=idx,
        weight=wts / wts.sum(axis=1, keepdims=True),
        ideal=np.take_along_axis(ideal, idx.T, axis=0).T,
        tile_sum=np.rint(np.stack([sums[idx[c], c, :] for c in range(c_out)])).astype(np.int16),
        tile_active=np.rint(active[idx]).astype(np.int16),
        pool=pool,
    )


def _allocate(sizes: list[int], n: int) -> list[int]:
    """Spread ``n`` draws evenly over strata of the given sizes (a stratum gives at most its size)."""
    take = [0] * len(sizes)
    left = min(n, sum(sizes))
    open_ = [i for i, s in enumerate(sizes) if s > 0]
    while left > 0 and open_:
        share = max(1, left // len(open_))
        for i in list(open_):
            add = min(share, sizes[i] - take[i], left)
            take[i] += add
            left -= add
            if take[i] == sizes[i]:
                open_.remove(i)
            if left == 0:
                break
    return take

"""What compensation needs about one model that no die changes, computed once and shared by every die.

Keyed by the model's program hash, the chip geometry and the activation statistics' sample draw, in a
small per-process LRU (:func:`model_tables`): the weight matrices of the binary layers and, per
(layer, column tile, row tile), the sampled calibration patches gathered channel by channel, so a
die's per-cell error term is one batched matrix product per row tile instead of a product over the
whole patch pool followed by a gather.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import replace
from typing import TypeVar

import numpy as np
import torch
from numpy.typing import NDArray

from app.calibration.activations import ActivationStats, LayerStats
from hardware.chip import ChipGeometry, NetworkProgram

_T = TypeVar("_T", bound=np.generic)

CACHE_MODELS = 2
"""Models kept per process (the gathered patches of the reference KWS model take about 100 MB)."""


class ModelTables:
    """Die-independent tables of one (program, statistics) pair; thread-safe, filled lazily."""

    def __init__(self, program: NetworkProgram, stats: ActivationStats) -> None:
        self.program = program
        self.stats = stats
        self.weights: dict[str, NDArray[np.int8]] = {
            layer.name: layer.weight_matrix() for layer in program.binary_layers()
        }
        self._patches: dict[tuple[str, int, int, int, int], torch.Tensor] = {}
        self._boundary: dict[tuple[str, int, int], NDArray[np.float64]] = {}
        self._repeated: dict[tuple[str, int, int, int], LayerStats] = {}
        self._lock = threading.Lock()

    def boundary(self, layer: str, c0: int, nc: int) -> NDArray[np.float64]:
        """(nc, n_rt): each row tile's mean ideal partial sum over the samples of channels c0..c0+nc
        whose ideal sum lies within 2 of the threshold (where the decision is made)."""
        key = (layer, c0, nc)
        hit = self._boundary.get(key)
        if hit is None:
            hit = boundary_sums(self.stats.layers[layer], c0, nc)
            with self._lock:
                hit = self._boundary.setdefault(key, hit)
        return hit

    def repeated(self, layer: str, c0: int, nc: int, times: int) -> LayerStats:
        """The per-channel statistics of channels c0..c0+nc repeated ``times`` (one copy per die
        searched together; samples and pool shared)."""
        key = (layer, c0, nc, times)
        hit = self._repeated.get(key)
        if hit is None:
            ls = self.stats.layers[layer]

            def rep(a: NDArray[_T]) -> NDArray[_T]:
                return np.concatenate([a[c0 : c0 + nc]] * times)

            hit = replace(
                ls,
                threshold=rep(ls.threshold),
                sample_idx=rep(ls.sample_idx),
                weight=rep(ls.weight),
                ideal=rep(ls.ideal),
                tile_sum=rep(ls.tile_sum),
                tile_active=rep(ls.tile_active),
            )
            with self._lock:
                if len(self._repeated) >= 64:  # a few batch sizes per column tile
                    self._repeated.clear()
                hit = self._repeated.setdefault(key, hit)
        return hit

    def patches(self, layer: str, c0: int, nc: int, r0: int, nr: int) -> torch.Tensor:
        """Sampled patches (nc, nr, n) float32: rows r0..r0+nr of the pool patches channel c0+c sampled
        (rows before samples: the layout the batched product is fastest on)."""
        key = (layer, c0, nc, r0, nr)
        hit = self._patches.get(key)
        if hit is not None:
            return hit
        ls = self.stats.layers[layer]
        idx = ls.sample_idx[c0 : c0 + nc]  # (nc, n)
        gathered = ls.pool[:, r0 : r0 + nr][idx].astype(np.float32)  # (nc, n, nr)
        t = torch.from_numpy(np.ascontiguousarray(gathered.transpose(0, 2, 1)))
        with self._lock:
            self._patches.setdefault(key, t)
        return self._patches[key]


def boundary_sums(stats: LayerStats, c0: int, nc: int) -> NDArray[np.float64]:
    """See :meth:`ModelTables.boundary` (``stats`` may hold several dies' repeated channels)."""
    t_ideal = stats.threshold[c0 : c0 + nc].astype(np.float64)
    s_sum = stats.tile_sum[c0 : c0 + nc].astype(np.float64)  # (nc, n, n_rt)
    near = np.abs(s_sum.sum(axis=2) - t_ideal[:, None] + 0.5) <= 2.0
    w = np.where(near, 1.0, 1e-6)
    return np.asarray((s_sum * w[:, :, None]).sum(axis=1) / w.sum(axis=1)[:, None], dtype=np.float64)


_CACHE: OrderedDict[tuple[str, ChipGeometry, str], ModelTables] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _stats_draw(stats: ActivationStats) -> str:
    h = hashlib.sha256()
    for name in sorted(stats.layers):
        h.update(name.encode() + np.ascontiguousarray(stats.layers[name].sample_idx).tobytes())
    return h.hexdigest()


def model_tables(program: NetworkProgram, stats: ActivationStats) -> ModelTables:
    """The shared :class:`ModelTables` of ``program`` with ``stats`` (built on first use)."""
    key = (stats.program_sha256, stats.geometry, _stats_draw(stats))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
        tables = ModelTables(program, stats)
        _CACHE[key] = tables
        while len(_CACHE) > CACHE_MODELS:
            _CACHE.popitem(last=False)
        return tables

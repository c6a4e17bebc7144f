"""What a model needs at run time, built once per model per process.

For each stored model: the network (validated, never unpickled), its chip program, and its
activation statistics on the calibration clips (model-level, computed once per model and cached on
disk under ``cache_dir``, never per die). Plus the evaluation data of the KWS task: calibration
clips from the validation speakers and functional-test clips from the held-out test speakers.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from app.calibration.activations import STATS_VERSION, ActivationStats, StatsFormatError
from app.config import Settings
from app.errors import InvalidInputError
from app.nn.kws_data import load_kws
from app.nn.model import BinaryNetwork, load_model_bytes, to_program
from hardware.chip import ChipGeometry, NetworkProgram

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalData:
    """calib_features float32 (n_cal, 1, 40, 49); test_features (n_test, ...), test_labels int64."""

    calib_features: NDArray[np.float32]
    test_features: NDArray[np.float32]
    test_labels: NDArray[np.int64]
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class ModelRuntime:
    name: str
    version: str
    sha256: str
    net: BinaryNetwork
    program: NetworkProgram
    stats: ActivationStats

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def _evenly(n_total: int, n: int) -> NDArray[np.intp]:
    """``n`` indices spread evenly over ``n_total`` (deterministic, keeps the class balance)."""
    n = min(n, n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(np.intp))


class ModelRuntimes:
    """Per-process cache of :class:`ModelRuntime` by model content hash (thread-safe)."""

    def __init__(self, settings: Settings, geometry: ChipGeometry | None = None) -> None:
        self.settings = settings
        self.geometry = geometry or ChipGeometry()
        self._lock = threading.Lock()
        self._eval: EvalData | None = None
        self._cache: dict[str, ModelRuntime] = {}

    @property
    def stats_dir(self) -> Path:
        return self.settings.cache_dir / "model-stats"

    def eval_data(self) -> EvalData:
        with self._lock:
            if self._eval is None:
                n = self.settings.eval_clips_per_class
                per = {"train": 1, "val": n, "test": n}
                kws_dir = self.settings.cache_dir / "kws"
                cal, _, names = load_kws("val", kws_dir, clips_per_class=per, progress=False)
                test_x, test_y, _ = load_kws("test", kws_dir, clips_per_class=per, progress=False)
                pick = _evenly(len(test_y), self.settings.functional_test_clips)
                self._eval = EvalData(cal, test_x[pick], test_y[pick], names)
            return self._eval

    def cached(self, sha256: str) -> ModelRuntime | None:
        return self._cache.get(sha256)

    def get(self, name: str, version: str, sha256: str, blob: bytes) -> ModelRuntime:
        """The runtime of a stored model (``blob`` is only parsed on the first call per process)."""
        hit = self._cache.get(sha256)
        if hit is not None:
            return hit
        try:
            net = load_model_bytes(blob)
        except ValueError as e:
            raise InvalidInputError(
                f"model {name}@{version} cannot be loaded: {e}", code="invalid_model"
            ) from e
        program = to_program(net)
        stats = self._stats(program, sha256)
        runtime = ModelRuntime(name, version, sha256, net, program, stats)
        with self._lock:
            self._cache[sha256] = runtime
        return runtime

    def _stats(self, program: NetworkProgram, sha256: str) -> ActivationStats:
        n = self.settings.eval_clips_per_class
        path = self.stats_dir / f"{sha256}-s{STATS_VERSION}-n{n}.bin"
        if path.exists():
            try:
                return ActivationStats.from_bytes(path.read_bytes(), program)
            except StatsFormatError as e:
                log.warning("discarding unreadable activation statistics %s: %s", path, e)
        stats = ActivationStats.from_program(program, self.eval_data().calib_features, geometry=self.geometry)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(stats.to_bytes())
        tmp.replace(path)
        return stats

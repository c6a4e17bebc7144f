"""What a model needs at run time, built once per model per process.

For each stored model: the network (validated, never unpickled), its chip program, its activation
statistics on its own calibration dataset (model-level, computed once per model and cached on disk
under ``cache_dir``, never per die), its functional-test samples (from its own test dataset,
preprocessed, labels mapped to the model's classes by name) and its pass grades.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from sqlalchemy.orm import Session

from app.calibration.activations import STATS_VERSION, ActivationStats, StatsFormatError
from app.calibration.functional import GradeRule
from app.config import Settings
from app.db.tables import Dataset as DatasetRow
from app.db.tables import Model
from app.errors import InvalidInputError
from app.nn.dataset import Dataset
from app.nn.model import BinaryNetwork, load_model_bytes, to_program
from app.services import datasets as dataset_service
from app.services.models import grade_rules, test_samples
from hardware.chip import ChipGeometry, NetworkProgram

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """A stored model with its datasets, as the service hands it over (``key`` names the whole)."""

    key: str
    name: str
    version: str
    sha256: str
    blob: bytes
    calibration: Dataset
    calibration_sha256: str
    test: Dataset
    grades: tuple[GradeRule, ...]


@dataclass(frozen=True)
class ModelRuntime:
    """test_features float32 (n, *input_shape) preprocessed; test_labels int64 model class indices."""

    name: str
    version: str
    sha256: str
    net: BinaryNetwork
    program: NetworkProgram
    stats: ActivationStats
    test_features: NDArray[np.float32]
    test_labels: NDArray[np.int64]
    test_dataset: str
    grades: tuple[GradeRule, ...]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class ModelRuntimes:
    """Per-process cache of :class:`ModelRuntime` by :attr:`ModelSource.key` (thread-safe).

    Building one also sets this process's torch to one intra-op thread: the station computes one die
    per test-site thread (or per Celery solo process, one per core), so torch's own threads would
    only contend with the other dies; on a loaded 2-core machine they cost 5-8x the CPU of
    compensation (docs/performance.md).
    """

    def __init__(self, settings: Settings, geometry: ChipGeometry | None = None) -> None:
        torch.set_num_threads(1)
        self.settings = settings
        self.geometry = geometry or ChipGeometry()
        self._lock = threading.Lock()
        self._cache: dict[str, ModelRuntime] = {}

    @property
    def stats_dir(self) -> Path:
        return self.settings.cache_dir / "model-stats"

    def cached(self, key: str) -> ModelRuntime | None:
        return self._cache.get(key)

    def get(self, source: ModelSource) -> ModelRuntime:
        """The runtime of a stored model (its blob and datasets are only parsed once per process)."""
        hit = self._cache.get(source.key)
        if hit is not None:
            return hit
        try:
            net = load_model_bytes(source.blob)
        except ValueError as e:
            raise InvalidInputError(
                f"model {source.name}@{source.version} cannot be loaded: {e}", code="invalid_model"
            ) from e
        program = to_program(net)
        stats = self._stats(net, program, source)
        x, y = test_samples(net, source.test, self.settings.functional_test_clips)
        runtime = ModelRuntime(
            source.name,
            source.version,
            source.sha256,
            net,
            program,
            stats,
            x,
            y,
            source.test.ref,
            source.grades,
        )
        with self._lock:
            self._cache[source.key] = runtime
        return runtime

    def _stats(self, net: BinaryNetwork, program: NetworkProgram, source: ModelSource) -> ActivationStats:
        path = self.stats_dir / f"{source.sha256}-{source.calibration_sha256[:16]}-s{STATS_VERSION}.bin"
        if path.exists():
            try:
                return ActivationStats.from_bytes(path.read_bytes(), program)
            except StatsFormatError as e:
                log.warning("discarding unreadable activation statistics %s: %s", path, e)
        features = net.prep.apply(source.calibration.x)
        stats = ActivationStats.from_program(program, features, geometry=self.geometry)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_bytes(stats.to_bytes())
        tmp.replace(path)
        return stats


def _source_key(model: Model) -> str:
    parts = [model.sha256]
    for ds in (model.calibration_dataset, model.test_dataset):
        parts.append(ds.sha256 if ds is not None else "station-kws")
    return ":".join(parts)


def _datasets(session: Session, settings: Settings, model: Model) -> tuple[Dataset, str, Dataset]:
    cal_row: DatasetRow | None = model.calibration_dataset
    test_row: DatasetRow | None = model.test_dataset
    if cal_row is not None and test_row is not None:
        return (
            dataset_service.load_dataset(session, cal_row),
            cal_row.sha256,
            dataset_service.load_dataset(session, test_row),
        )
    # A model stored before datasets existed: the station's generated KWS sets, as it was tested then.
    cal, test = dataset_service.generate_kws_datasets(settings)
    return cal, "station-kws", test


def runtime_for(session: Session, runtimes: ModelRuntimes, model: Model) -> ModelRuntime:
    """A stored model's runtime; its blob and datasets are read from the database only when the
    process lacks it."""
    key = _source_key(model)
    hit = runtimes.cached(key)
    if hit is not None:
        return hit
    cal, cal_sha, test = _datasets(session, runtimes.settings, model)
    source = ModelSource(
        key, model.name, model.version, model.sha256, model.blob, cal, cal_sha, test, grade_rules(model)
    )
    return runtimes.get(source)

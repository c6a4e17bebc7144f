"""Datasets (labelled inputs for calibration and functional tests)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from app.api.schemas.common import with_example


class DatasetOut(BaseModel):
    model_config = with_example(
        {
            "name": "digits-test",
            "version": "1",
            "role": "test",
            "sha256": "5b1d...a0",
            "size_bytes": 93412,
            "n_samples": 450,
            "input_shape": [1, 8, 8],
            "class_names": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            "features": "raw",
            "provenance": {"source": "sklearn.datasets.load_digits", "split_seed": 0},
            "created_by": "startup",
            "created_at": "2026-12-01T08:30:00Z",
        },
        from_attributes=True,
    )

    name: str
    version: str
    role: str
    sha256: str
    size_bytes: int
    n_samples: int
    input_shape: list[int]
    class_names: list[str]
    features: str
    provenance: dict[str, Any]
    created_by: str
    created_at: datetime

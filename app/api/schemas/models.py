"""Uploaded networks."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from app.api.schemas.common import with_example

if TYPE_CHECKING:
    from app.db.tables import Dataset, Model

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class GradeOut(BaseModel):
    soft_bin: int
    hard_bin: int
    label: str
    min_accuracy: float


class ModelOut(BaseModel):
    model_config = with_example(
        {
            "name": "digits-bnn",
            "version": "1",
            "sha256": "9f2c...e1",
            "size_bytes": 18342,
            "format_version": 2,
            "input_shape": [1, 8, 8],
            "preprocessing": "none",
            "class_names": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            "software_accuracy": 0.951,
            "calibration_dataset": "digits-calib@1",
            "test_dataset": "digits-test@1",
            "ideal_accuracy": 0.946,
            "pass_limits": {
                "mode": "relative",
                "grades": [{"soft_bin": 1, "label": "PASS_GRADE_A", "min_accuracy": 0.97}],
            },
            "grades": [{"soft_bin": 1, "hard_bin": 1, "label": "PASS_GRADE_A", "min_accuracy": 0.917}],
            "created_at": "2026-12-01T08:30:00Z",
        }
    )

    name: str
    version: str
    sha256: str
    size_bytes: int
    format_version: int
    input_shape: list[int] | None
    preprocessing: str | None
    class_names: list[str]
    software_accuracy: float | None
    calibration_dataset: str | None
    test_dataset: str | None
    ideal_accuracy: float | None
    pass_limits: dict[str, Any] | None
    grades: list[GradeOut] | None
    created_at: datetime

    @classmethod
    def of(cls, row: Model) -> ModelOut:
        def ref(ds: Dataset | None) -> str | None:
            return None if ds is None else f"{ds.name}@{ds.version}"

        return cls(
            name=row.name,
            version=row.version,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            format_version=row.format_version,
            input_shape=row.input_shape,
            preprocessing=row.preprocessing,
            class_names=row.class_names,
            software_accuracy=row.software_accuracy,
            calibration_dataset=ref(row.calibration_dataset),
            test_dataset=ref(row.test_dataset),
            ideal_accuracy=row.ideal_accuracy,
            pass_limits=row.pass_limits,
            grades=None
            if row.grade_table is None
            else [
                GradeOut(soft_bin=g[0], hard_bin=g[1], label=g[2], min_accuracy=g[3]) for g in row.grade_table
            ],
            created_at=row.created_at,
        )

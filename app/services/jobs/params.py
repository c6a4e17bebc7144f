"""What a calibration job does: its steps, die selection, retry policy and stored parameters."""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from app.db.tables import JobState
from app.errors import InvalidInputError

JOB_KIND = "calibrate"
STEP_ORDER: tuple[str, ...] = ("characterize", "compensate", "functional-test")
NEEDS_MODEL = frozenset({"compensate", "functional-test"})
TERMINAL_STATES = frozenset(
    {JobState.succeeded, JobState.completed_with_failures, JobState.failed, JobState.cancelled}
)
OPEN_STATES = frozenset({JobState.queued, JobState.running})


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per step for transient hardware errors; the k-th retry waits
    ``min(backoff_max_s, backoff_s * 2**(k-1))``."""

    max_attempts: int = 4
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError(f"invalid retry policy {self}")

    def delay_s(self, attempt: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class DieSelection:
    """Which dies of the lot: all of them, one wafer, or a list of ECIDs."""

    kind: Literal["all", "wafer", "ecids"] = "all"
    wafer: int | None = None
    ecids: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        if self.kind == "wafer":
            return {"kind": "wafer", "wafer": self.wafer}
        if self.kind == "ecids":
            return {"kind": "ecids", "ecids": list(self.ecids)}
        return {"kind": "all"}


@dataclass(frozen=True)
class JobParams:
    """What a calibration job does; stored as ``job.params`` (JSON)."""

    lot_id: str
    steps: tuple[str, ...]
    model: str | None = None  # "name@version"
    model_id: int | None = None
    force: bool = False
    functional_test_sample: float = 1.0
    dies: dict[str, Any] = field(default_factory=lambda: {"kind": "all"})
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = list(self.steps)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobParams:
        return cls(
            lot_id=d["lot_id"],
            steps=tuple(d["steps"]),
            model=d.get("model"),
            model_id=d.get("model_id"),
            force=bool(d.get("force", False)),
            functional_test_sample=float(d.get("functional_test_sample", 1.0)),
            dies=dict(d.get("dies") or {"kind": "all"}),
            retry=RetryPolicy(**(d.get("retry") or {})),
        )


def parse_model_ref(model_ref: str) -> tuple[str, str]:
    name, sep, version = model_ref.partition("@")
    if not sep or not name or not version:
        raise InvalidInputError(f"model {model_ref!r}: expected 'name@version'", code="invalid_model_ref")
    return name, version


def in_sample(ecid: str, fraction: float) -> bool:
    """Deterministic sample of dies: the same ECIDs are picked on every run for one fraction."""
    if fraction >= 1.0:
        return True
    h = int.from_bytes(hashlib.sha256(ecid.encode()).digest()[:8], "big")
    return h / 2.0**64 < fraction


def ordered_steps(steps: Collection[str]) -> tuple[str, ...]:
    unknown = set(steps) - set(STEP_ORDER)
    if unknown:
        raise InvalidInputError(f"unknown steps {sorted(unknown)}; known: {list(STEP_ORDER)}")
    if not steps:
        raise InvalidInputError("no steps given")
    return tuple(s for s in STEP_ORDER if s in steps)

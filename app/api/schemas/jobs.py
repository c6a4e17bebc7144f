"""Calibration jobs: the request that starts one, its progress, the listing."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.common import with_example
from app.services.jobs import DieSelection, JobProgress

Step = Literal["characterize", "compensate", "functional-test"]
JobStateOut = Literal["queued", "running", "succeeded", "completed_with_failures", "failed", "cancelled"]
ALL_STEPS: tuple[Step, ...] = ("characterize", "compensate", "functional-test")


class AllDies(BaseModel):
    """Every die of the lot."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["all"]


class WaferDies(BaseModel):
    """Every die of one wafer."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["wafer"]
    wafer: int = Field(ge=1, le=99)


class EcidDies(BaseModel):
    """The listed dies (ECIDs of this lot)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["ecids"]
    ecids: list[str] = Field(min_length=1, max_length=10_000)


DiesIn = Annotated[AllDies | WaferDies | EcidDies, Field(discriminator="kind")]


class CalibrateIn(BaseModel):
    model_config = with_example(
        {
            "model": "kws-bnn@1.0.0",
            "steps": ["characterize", "compensate", "functional-test"],
            "dies": {"kind": "wafer", "wafer": 1},
            "force": False,
        },
        extra="forbid",
    )

    model: str | None = Field(
        None,
        min_length=3,
        max_length=97,
        pattern=r"^[^@]+@[^@]+$",
        description="`name@version` of an uploaded model; needed by compensate and functional-test.",
    )
    steps: list[Step] = Field(
        default_factory=lambda: list(ALL_STEPS),
        min_length=1,
        max_length=3,
        description="Run in this order per die whatever order they are given in.",
    )
    dies: DiesIn = Field(default_factory=lambda: AllDies(kind="all"))
    force: bool = Field(
        False,
        description="Characterize (and functional-test) again dies that already have a current "
        "signature (test result). Without it, those dies cost no tester time.",
    )
    functional_test_sample: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Fraction of the dies that get the functional test, picked deterministically "
        "from their ECIDs (1 = every die).",
    )

    def selection(self) -> DieSelection:
        d = self.dies
        if isinstance(d, WaferDies):
            return DieSelection("wafer", wafer=d.wafer)
        if isinstance(d, EcidDies):
            return DieSelection("ecids", ecids=tuple(d.ecids))
        return DieSelection()


class StepProgressOut(BaseModel):
    step: str
    total: int
    done: int = Field(description="Items finished: succeeded + failed + cancelled.")
    succeeded: int
    failed: int
    cancelled: int
    running: int
    queued: int
    dies_per_s: float | None


_JOB_EXAMPLE: dict[str, Any] = {
    "id": 12,
    "kind": "calibrate",
    "state": "running",
    "lot_id": "LOT0001",
    "params": {
        "lot_id": "LOT0001",
        "model": "kws-bnn@1.0.0",
        "steps": ["characterize", "compensate", "functional-test"],
        "force": False,
    },
    "counters": {
        "dies": 500,
        "dies_done": 120,
        "dies_succeeded": 119,
        "dies_failed": 1,
        "dies_alarmed": 1,
        "dies_die_fault": 0,
        "dies_cancelled": 0,
        "items_retried": 2,
        "attempts": 363,
    },
    "created_by": "engineer:ab12cd34",
    "created_at": "2026-01-05T08:30:00Z",
    "started_at": "2026-01-05T08:30:01Z",
    "finished_at": None,
}


class JobOut(BaseModel):
    model_config = with_example(_JOB_EXAMPLE)

    id: int
    kind: str
    state: JobStateOut = Field(
        description="`queued`, `running`; then `succeeded` (every die passed every step), "
        "`completed_with_failures` (some dies failed a step: see `counters` and `errors`), "
        "`failed` (every die failed a step) or `cancelled`."
    )
    lot_id: str | None
    params: dict[str, Any]
    counters: dict[str, int] = Field(
        description="Per die, from the job's items: `dies`, `dies_done`, `dies_succeeded`, `dies_failed` "
        "(of which `dies_alarmed`: alarm bin, retest; `dies_die_fault`: die-fault bin), `dies_cancelled`, "
        "`items_retried` (steps that needed more than one attempt), `attempts` (step attempts started). "
        "Updated after every chunk; empty until the first chunk ended."
    )
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Any) -> JobOut:
        return cls(
            id=job.id,
            kind=job.kind,
            state=job.state,
            lot_id=job.lot_id,
            params=dict(job.params),
            counters={str(k): int(v) for k, v in (job.counters or {}).items()},
            created_by=job.created_by,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class ItemErrorOut(BaseModel):
    ecid: str
    step: str
    attempts: int
    error: str


class JobProgressOut(JobOut):
    model_config = with_example(
        {
            **_JOB_EXAMPLE,
            "total_dies": 500,
            "open_dies": 380,
            "dies_per_s": 4.2,
            "eta_s": 90.5,
            "steps": [
                {
                    "step": "characterize",
                    "total": 500,
                    "done": 121,
                    "succeeded": 120,
                    "failed": 1,
                    "cancelled": 0,
                    "running": 2,
                    "queued": 377,
                    "dies_per_s": 4.3,
                }
            ],
            "errors": [
                {
                    "ecid": "LOT0001-W01-X+003Y-002",
                    "step": "characterize",
                    "attempts": 4,
                    "error": "alarm: characterize: hardware_timeout: ... (gave up after 4 attempts)",
                }
            ],
        }
    )

    total_dies: int
    open_dies: int = Field(description="Dies with a step still queued or running.")
    dies_per_s: float | None = Field(description="Finished dies per second since the first item started.")
    eta_s: float | None = Field(description="Seconds to finish at that rate; null before any die finished.")
    steps: list[StepProgressOut]
    errors: list[ItemErrorOut] = Field(description="The most recent failed items (at most 20).")

    @classmethod
    def of_progress(cls, p: JobProgress) -> JobProgressOut:
        base = JobOut.of(p.job).model_dump()
        return cls(
            **base,
            total_dies=p.total_dies,
            open_dies=p.open_dies,
            dies_per_s=p.dies_per_s,
            eta_s=p.eta_s,
            steps=[
                StepProgressOut(
                    step=s.step,
                    total=s.total,
                    done=s.done,
                    succeeded=s.succeeded,
                    failed=s.failed,
                    cancelled=s.cancelled,
                    running=s.running,
                    queued=s.queued,
                    dies_per_s=s.dies_per_s,
                )
                for s in p.steps
            ],
            errors=[ItemErrorOut(ecid=e, step=s, attempts=a, error=err) for e, s, a, err in p.errors],
        )

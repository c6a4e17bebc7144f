"""Alarms are records of what happened: bins, code, step and site, never an accuracy or a test time;
one record per (job item, attempt), whatever a crash leaves behind. The job steps are the real ones
(app/jobs/steps.py) on the simulated fleet; the faults are the simulator's own knobs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.session import session_scope
from app.db.tables import JobItem, JobState, Signature, TestResult
from app.jobs.steps import calibration_steps
from app.services import alarms, jobs
from app.services.hardware import DriverPool
from app.services.jobs import STEP_ORDER, ExecutionContext, RetryPolicy, StepCall, process_chunk
from hardware.driver import DieFault, HardwareTimeoutError
from tests.jobs.conftest import add_models, register_lot

MODEL = "kws@1"
FAST = RetryPolicy(max_attempts=2, backoff_s=0.0, backoff_max_s=0.0)


def _job(factory: sessionmaker[Session], lot_id: str, ecids: tuple[str, ...] | None = None) -> int:
    with session_scope(factory) as s:
        dies = None if ecids is None else jobs.DieSelection(kind="ecids", ecids=ecids)
        job = jobs.create_calibration_job(
            s, lot_id=lot_id, steps=STEP_ORDER, model=MODEL, dies=dies, retry=FAST, actor="tests"
        )
        return job.id


def _items(factory: sessionmaker[Session], job_id: int) -> dict[tuple[int, str], JobItem]:
    with session_scope(factory) as s:
        rows = s.scalars(select(JobItem).where(JobItem.job_id == job_id)).all()
        s.expunge_all()
        return {(i.die_id, i.step): i for i in rows}


def _results(factory: sessionmaker[Session]) -> list[TestResult]:
    with session_scope(factory) as s:
        rows = list(s.scalars(select(TestResult).order_by(TestResult.id)))
        s.expunge_all()
        return rows


@pytest.fixture
def lot(session_factory: sessionmaker[Session]) -> list[str]:
    ecids = register_lot(session_factory, "ALARM1", wafers=1, columns=3, rows=1)
    add_models(session_factory, (MODEL,))
    return ecids


def _call(factory: sessionmaker[Session], job_id: int, ecid: str, step: str, attempt: int = 1) -> StepCall:
    with session_scope(factory) as s:
        from app.db.repositories import dies

        die = dies.get_by_ecid(s, ecid)
        assert die is not None
        die_id = die.id
    item = _items(factory, job_id)[(die_id, step)]
    return StepCall(job_id, die_id, ecid, step, MODEL, False, item.id, attempt)


def test_the_alarm_step_records_once_per_job_item_and_attempt(
    session_factory: sessionmaker[Session], settings: Settings, lot: list[str]
) -> None:
    steps = calibration_steps(session_factory, settings)
    job_id = _job(session_factory, "ALARM1")
    error = HardwareTimeoutError("run_network", 5.0)
    call = _call(session_factory, job_id, lot[0], "functional-test")
    from dataclasses import replace

    # The worker records the alarm, is killed before the item's update; the redelivery records it again.
    steps.alarm(replace(call, error=error), "functional-test: hardware_timeout: ...", False)
    steps.alarm(replace(call, error=error), "functional-test: hardware_timeout: ...", False)
    (row,) = _results(session_factory)
    assert (row.soft_bin, row.hard_bin, row.accuracy, row.test_time_s) == (0, 0, None, None)
    assert (row.alarm_code, row.step, row.job_item_id, row.attempt) == (
        "hardware_timeout",
        "functional-test",
        call.item_id,
        1,
    )
    assert row.reason is not None and "hardware_timeout" in row.reason

    # Alarm, then pass: the redelivered step does not test the die again under that item.
    with pytest.raises(alarms.AlarmRecordedError):
        steps.functional_test(call)
    with pytest.raises(alarms.AlarmRecordedError):
        steps.characterize(replace(call, step="characterize"))
    assert len(_results(session_factory)) == 1

    # The schema itself holds one record per (job item, attempt).
    with pytest.raises(IntegrityError), session_scope(session_factory) as s:
        s.add(
            TestResult(
                die_id=row.die_id,
                model_id=row.model_id,
                accuracy=0.9,
                hard_bin=1,
                soft_bin=1,
                test_time_s=0.5,
                job_item_id=call.item_id,
                attempt=1,
            )
        )
    assert len(_results(session_factory)) == 1

    # A die fault on another die is a verdict (the gross-defect bin), still without a measurement.
    other = _call(session_factory, job_id, lot[1], "characterize")
    steps.alarm(replace(other, error=DieFault("short", op="probe")), "characterize: die_fault: short", True)
    fault = _results(session_factory)[-1]
    assert (fault.soft_bin, fault.accuracy, fault.test_time_s, fault.alarm_code) == (
        12,
        None,
        None,
        "die_fault",
    )


def test_a_redelivered_chunk_finishes_the_alarmed_item_without_a_retest(
    session_factory: sessionmaker[Session], settings: Settings, lot: list[str]
) -> None:
    steps = calibration_steps(session_factory, settings)
    job_id = _job(session_factory, "ALARM1", (lot[0],))
    call = _call(session_factory, job_id, lot[0], "characterize")
    # What a killed worker left: the alarm committed, the item never updated (still queued here, as
    # after a release or an expired lease).
    steps.alarm(call, "characterize: contact_lost: ... (gave up after 4 attempts)", False)
    result = process_chunk(ExecutionContext(session_factory, steps), job_id, [call.die_id])
    assert result.processed == [call.die_id]
    items = _items(session_factory, job_id)
    char = items[(call.die_id, "characterize")]
    assert char.state == JobState.failed and char.error is not None and "alarm_recorded" in char.error
    assert items[(call.die_id, "functional-test")].error == "not run: characterize failed"
    (row,) = _results(session_factory)  # one bin-0 row, no pass next to it
    assert row.soft_bin == 0
    with session_scope(session_factory) as s:  # the die was not characterized again
        assert s.scalar(select(Signature.id)) is None


@pytest.fixture
def pool(settings: Settings) -> Iterator[DriverPool]:
    p = DriverPool.from_settings(settings)
    yield p
    p.close()


def test_an_error_raised_on_a_site_names_the_site(pool: DriverPool) -> None:
    with pytest.raises(HardwareTimeoutError) as caught, alarms.on_site(pool) as site:
        raise HardwareTimeoutError("read_macro", 1.0)
    prov = alarms.site_of(caught.value)
    assert prov is not None and prov.site == site.index and prov.driver == site.driver_name
    assert alarms.site_of(HardwareTimeoutError("probe", 1.0)) is None

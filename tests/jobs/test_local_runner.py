"""The job engine and the in-process runner, end to end on a small lot (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow
from app.db.session import session_scope
from app.db.tables import AuditEvent, Image, Job, JobItem, JobState, Signature, TestResult
from app.errors import ConflictError, InvalidInputError, NotFoundError
from app.jobs.runner import LocalRunner
from app.services import jobs
from app.services.jobs import (
    STEP_ORDER,
    DieSelection,
    ExecutionContext,
    RetryPolicy,
    StepCall,
    StepFunctions,
    process_chunk,
)
from app.services.jobs.execution import _run_step
from hardware.driver import ContactError, DieFault, HardwareTimeoutError, ProtocolError
from tests.jobs.conftest import FAST_RETRY, LOT, Harness

Factory = sessionmaker[Session]


def create_job(factory: Factory, steps: tuple[str, ...] = STEP_ORDER, **kw: object) -> int:
    kw.setdefault("model", "kws@1")
    kw.setdefault("retry", FAST_RETRY)
    with session_scope(factory) as s:
        return jobs.create_calibration_job(s, lot_id=LOT, steps=steps, actor="tests", **kw).id  # type: ignore[arg-type]


def run_to_end(harness: Harness, *, workers: int = 2, chunk_dies: int = 4) -> None:
    runner = LocalRunner(harness.context, workers=workers, chunk_dies=chunk_dies)
    runner.start()  # resumes every open job
    try:
        assert runner.wait_idle(timeout_s=60)
    finally:
        runner.stop()


def per_die(factory: Factory, table: type[Signature] | type[Image] | type[TestResult]) -> Counter[int]:
    with session_scope(factory) as s:
        return Counter(dict(s.execute(select(table.die_id, func.count()).group_by(table.die_id)).all()))  # type: ignore[arg-type]


def job_state(factory: Factory, job_id: int) -> str:
    with session_scope(factory) as s:
        state = s.scalar(select(Job.state).where(Job.id == job_id))
    assert state is not None
    return state


def test_local_runner_calibrates_a_small_lot_exactly_once(
    session_factory: Factory, lot_ecids: list[str], make_context: Callable[..., Harness]
) -> None:
    job_id = create_job(session_factory)
    h = make_context()
    run_to_end(h)

    assert job_state(session_factory, job_id) == JobState.succeeded
    n = len(lot_ecids)
    assert (
        set(per_die(session_factory, Signature).values()) == {1}
        and len(per_die(session_factory, Signature)) == n
    )
    assert set(per_die(session_factory, Image).values()) == {1}
    assert set(per_die(session_factory, TestResult).values()) == {1}
    assert set(h.log.calls.values()) == {1} and len(h.log.calls) == 3 * n
    assert h.log.probes == 2 * n  # characterize + functional test

    with session_scope(session_factory) as s:
        p = jobs.job_progress(s, job_id)
        assert p.job.started_at is not None and p.job.finished_at is not None
    assert [(st.step, st.total, st.succeeded, st.failed, st.done) for st in p.steps] == [
        (step, n, n, 0, n) for step in STEP_ORDER
    ]
    assert (p.total_dies, p.open_dies, p.eta_s) == (n, 0, 0.0)
    assert p.dies_per_s is not None and p.dies_per_s > 0


def test_new_model_version_reuses_signatures_without_tester_time(
    session_factory: Factory, lot_ecids: list[str], make_context: Callable[..., Harness]
) -> None:
    create_job(session_factory)
    run_to_end(make_context())

    # A new model version: characterize without force and compensate; then compensate alone.
    second = create_job(session_factory, ("characterize", "compensate"), model="kws@2")
    third = create_job(session_factory, ("compensate",), model="kws@2")
    h = make_context()
    run_to_end(h)
    assert job_state(session_factory, second) == job_state(session_factory, third) == JobState.succeeded
    assert h.log.probes == 0  # no tester time
    assert set(per_die(session_factory, Signature).values()) == {1}
    assert set(per_die(session_factory, Image).values()) == {2}  # one per model version


def test_force_recharacterizes_once_even_when_a_chunk_is_delivered_again(
    session_factory: Factory, lot_ecids: list[str], make_context: Callable[..., Harness]
) -> None:
    create_job(session_factory)
    run_to_end(make_context())
    forced = create_job(session_factory, force=True)
    h = make_context()
    run_to_end(h)
    assert set(per_die(session_factory, Signature).values()) == {2}
    assert set(per_die(session_factory, TestResult).values()) == {2}

    # A redelivery after a crash that lost the item updates: the work is there, nothing is redone.
    with session_scope(session_factory) as s:
        s.execute(update(JobItem).where(JobItem.job_id == forced).values(state=JobState.queued))
        s.execute(update(Job).where(Job.id == forced).values(state=JobState.running))
    die_ids = jobs.open_die_ids(session_factory, forced)
    process_chunk(h.context, forced, die_ids)
    assert job_state(session_factory, forced) == JobState.succeeded
    assert set(per_die(session_factory, Signature).values()) == {2}
    assert set(per_die(session_factory, TestResult).values()) == {2}


def test_two_workers_on_the_same_chunk_never_run_a_die_step_twice(
    session_factory: Factory, lot_ecids: list[str], make_context: Callable[..., Harness]
) -> None:
    job_id = create_job(session_factory)
    die_ids = jobs.open_die_ids(session_factory, job_id)
    a, b = make_context(delay_s=0.01), make_context(delay_s=0.01)
    for h in (a, b):
        h.context.start()
    threads = [threading.Thread(target=process_chunk, args=(h.context, job_id, die_ids)) for h in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    calls = a.log.calls + b.log.calls
    assert len(calls) == 3 * len(lot_ecids) and set(calls.values()) == {1}
    assert a.log.calls and b.log.calls  # both got work
    assert job_state(session_factory, job_id) == JobState.succeeded


def test_a_dead_workers_items_are_reclaimed_after_the_lease_and_a_live_ones_are_left(
    session_factory: Factory, lot_ecids: list[str], make_context: Callable[..., Harness]
) -> None:
    job_id = create_job(session_factory)
    die_ids = jobs.open_die_ids(session_factory, job_id)
    dead, alive = die_ids[0], die_ids[1]
    now = utcnow()
    with session_scope(session_factory) as s:
        for die_id, owner, beat in (
            (dead, "ghost:1:x", now - timedelta(minutes=5)),
            (alive, "peer:2:y", now),
        ):
            s.execute(
                update(JobItem)
                .where(JobItem.job_id == job_id, JobItem.die_id == die_id)
                .values(state=JobState.running, claimed_by=owner, heartbeat_at=beat, started_at=beat)
            )
    h = make_context(lease_s=60)
    result = process_chunk(h.context, job_id, die_ids)
    assert result.busy == [alive]
    assert dead in result.processed and alive not in result.processed
    assert job_state(session_factory, job_id) == JobState.running
    with session_scope(session_factory) as s:
        p = jobs.job_progress(s, job_id)
    assert p.open_dies == 1 and p.eta_s is not None and p.eta_s > 0 and p.dies_per_s


def test_cancel_stops_the_job_and_leaves_no_item_open(
    session_factory: Factory, lot_ecids: list[str], make_context: Callable[..., Harness]
) -> None:
    job_id = create_job(session_factory)
    h = make_context(delay_s=0.05)
    runner = LocalRunner(h.context, workers=1, chunk_dies=2)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while not h.log.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        with session_scope(session_factory) as s:
            assert jobs.cancel_job(s, job_id, actor="tests").state == JobState.cancelled
        assert runner.wait_idle(timeout_s=30)
    finally:
        runner.stop()
    with session_scope(session_factory) as s:
        p = jobs.job_progress(s, job_id)
        with pytest.raises(ConflictError):
            jobs.cancel_job(s, job_id, actor="tests")
    assert p.job.state == JobState.cancelled and p.job.finished_at is not None
    assert sum(st.queued + st.running for st in p.steps) == 0
    assert 0 < sum(st.succeeded for st in p.steps) < 3 * len(lot_ecids)
    assert sum(st.cancelled for st in p.steps) > 0
    assert len(h.log.calls) < 3 * len(lot_ecids)


def test_a_stopped_runner_resumes_where_it_stopped(
    session_factory: Factory, lot_ecids: list[str], make_context: Callable[..., Harness]
) -> None:
    job_id = create_job(session_factory)
    first = make_context(delay_s=0.03)
    runner = LocalRunner(first.context, workers=1, chunk_dies=3)
    runner.start()
    deadline = time.monotonic() + 30
    while len(first.log.calls) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    runner.stop()  # the die in progress finishes its step; its other steps go back to the queue
    assert job_state(session_factory, job_id) == JobState.running

    second = make_context()
    run_to_end(second)
    assert job_state(session_factory, job_id) == JobState.succeeded
    calls = first.log.calls + second.log.calls
    assert len(calls) == 3 * len(lot_ecids) and set(calls.values()) == {1}
    assert set(per_die(session_factory, Signature).values()) == {1}
    assert set(per_die(session_factory, TestResult).values()) == {1}


def test_faults_are_retried_and_dies_that_still_fail_get_the_alarm_bin(
    session_factory: Factory, lot_ecids: list[str], make_context: Callable[..., Harness]
) -> None:
    job_id = create_job(session_factory, retry=RetryPolicy(max_attempts=2, backoff_s=0.0))
    h = make_context(p_timeout=0.15, p_contact_loss=0.1, p_gross_defect=0.2)
    run_to_end(h, workers=1)

    assert job_state(session_factory, job_id) == JobState.completed_with_failures
    with session_scope(session_factory) as s:
        counters = jobs.get_job(s, job_id).counters
        items = s.execute(
            select(JobItem.die_id, JobItem.step, JobItem.state, JobItem.attempts, JobItem.error).where(
                JobItem.job_id == job_id
            )
        ).all()
        results = s.execute(select(TestResult.die_id, TestResult.soft_bin, TestResult.hard_bin)).all()
    bins = {die_id: (soft, hard) for die_id, soft, hard in results}
    assert len(bins) == len(results) == len(lot_ecids)  # one result per die: a pass or an alarm
    failed = {die_id for die_id, _, state, _, _ in items if state == JobState.failed}
    assert failed and failed != set(bins)
    for die_id, _step, state, attempts, error in items:
        if state == JobState.succeeded:
            assert error is None
        elif error.startswith("alarm: "):
            assert die_id in failed and bins[die_id] == (0, 0)
            assert attempts == 2 and ("hardware_timeout" in error or "contact_lost" in error)
        elif error.startswith("die fault: "):
            assert die_id in failed and bins[die_id] == (99, 9)
        else:
            assert error.startswith("not run: ") and attempts == 0
    assert {bins[d] for d in set(bins) - failed} == {(1, 1)}
    assert any(a > 1 for _, _, state, a, _ in items if state == JobState.succeeded)  # retries helped
    alarmed = {d for d, _, _, _, e in items if e and e.startswith("alarm: ")}
    faulty = {d for d, _, _, _, e in items if e and e.startswith("die fault: ")}
    assert counters == {
        "dies": len(lot_ecids),
        "dies_done": len(lot_ecids),
        "dies_succeeded": len(lot_ecids) - len(failed),
        "dies_failed": len(failed),
        "dies_alarmed": len(alarmed),
        "dies_die_fault": len(faulty),
        "dies_cancelled": 0,
        "items_retried": sum(a > 1 for *_, a, _ in items),
        "attempts": sum(a for *_, a, _ in items),
    }


def test_a_job_whose_every_die_fails_ends_failed_not_succeeded(
    session_factory: Factory, lot_ecids: list[str], make_context: Callable[..., Harness]
) -> None:
    job_id = create_job(session_factory)
    h = make_context()

    def broken(call: StepCall) -> object:
        raise DieFault("short")

    h.context.steps = dataclasses.replace(h.context.steps, characterize=broken)
    run_to_end(h)
    n = len(lot_ecids)
    with session_scope(session_factory) as s:
        p = jobs.job_progress(s, job_id)
    assert p.job.state == JobState.failed and p.job.finished_at is not None
    assert [(st.step, st.failed, st.succeeded) for st in p.steps] == [(step, n, 0) for step in STEP_ORDER]
    assert p.job.counters["dies_failed"] == p.job.counters["dies_die_fault"] == n
    assert p.job.counters["dies_succeeded"] == 0 and p.job.counters["attempts"] == n  # not-run steps: none


def test_attempts_count_started_attempts_so_a_crash_inside_a_step_is_counted(
    session_factory: Factory, lot_ecids: list[str], make_context: Callable[..., Harness]
) -> None:
    """A worker that dies inside a step never finishes the attempt; the item still shows it, and the
    step function receives the item and its attempt number (unique per attempt over redeliveries)."""
    job_id = create_job(session_factory, ("characterize",))
    h = make_context()
    real = h.context.steps.characterize
    seen: list[tuple[int | None, int]] = []
    crashes = [SystemExit("killed")]

    def crashing(call: StepCall) -> object:
        seen.append((call.item_id, call.attempt))
        if crashes:
            raise crashes.pop()
        return real(call)

    h.context.steps = dataclasses.replace(h.context.steps, characterize=crashing)
    die_ids = jobs.open_die_ids(session_factory, job_id)
    with pytest.raises(SystemExit):
        process_chunk(h.context, job_id, die_ids[:1])
    process_chunk(h.context, job_id, die_ids)
    with session_scope(session_factory) as s:
        attempts = dict(
            s.execute(select(JobItem.die_id, JobItem.attempts).where(JobItem.job_id == job_id)).all()
        )
        job = jobs.get_job(s, job_id)
    assert attempts == {d: 2 if d == die_ids[0] else 1 for d in die_ids}
    assert seen[0][1] == 1 and seen[1] == (seen[0][0], 2)  # the same item, its second attempt
    assert len({item for item, _ in seen}) == len(die_ids) and None not in {item for item, _ in seen}
    assert job.state == JobState.succeeded and job.counters["attempts"] == len(die_ids) + 1


def test_job_creation_validates_its_input(session_factory: Factory, lot_ecids: list[str]) -> None:
    with pytest.raises(InvalidInputError):
        create_job(session_factory, ("compensate",), model=None)
    with pytest.raises(NotFoundError):
        create_job(session_factory, model="kws@9")
    with pytest.raises(NotFoundError):
        create_job(session_factory, dies=DieSelection("ecids", ecids=("NOPE-W01-X+000Y+000",)))
    with pytest.raises(InvalidInputError):
        create_job(session_factory, ("calibrate",))
    job_id = create_job(
        session_factory, dies=DieSelection("ecids", ecids=tuple(lot_ecids[:3])), functional_test_sample=0.5
    )
    with session_scope(session_factory) as s:
        p = jobs.job_progress(s, job_id)
    assert [st.total for st in p.steps][:2] == [3, 3] and p.steps[2].total <= 3
    wafer_job = create_job(session_factory, dies=DieSelection("wafer", wafer=2))
    with session_scope(session_factory) as s:
        assert jobs.job_progress(s, wafer_job).total_dies == len(lot_ecids) // 2


@pytest.mark.parametrize(
    ("errors", "state", "attempts", "alarms", "error_part"),
    [
        ([HardwareTimeoutError("probe", 1.0), ContactError("lost"), None], "succeeded", 3, 0, None),
        ([HardwareTimeoutError("probe", 1.0)] * 3, "failed", 3, 1, "alarm: characterize: hardware_timeout"),
        (
            [ContactError("lost"), DieFault("short")],
            "failed",
            2,
            1,
            "die fault: characterize: die_fault: short",
        ),
        (
            [ProtocolError("bad frame", protocol_code=7)],
            "failed",
            1,
            1,
            "alarm: characterize: protocol_error",
        ),
        ([InvalidInputError("no signature", code="not_characterized")], "failed", 1, 0, "not_characterized"),
        ([ValueError("bug")], "failed", 1, 0, "internal error: ValueError: bug"),
    ],
)
def test_retry_policy_per_error_kind(
    errors: list[Exception | None], state: str, attempts: int, alarms: int, error_part: str | None
) -> None:
    queue = list(errors)
    alarmed: list[str] = []
    delays: list[float] = []

    def step(call: StepCall) -> None:
        e = queue.pop(0)
        if e is not None:
            raise e

    steps = StepFunctions(step, step, step, lambda call, reason, die_fault: alarmed.append(reason))
    ctx = ExecutionContext(None, steps, sleep=delays.append)  # type: ignore[arg-type]
    call = StepCall(1, 1, "L-W01-X+000Y+000", "characterize", "m@1", False)
    got = _run_step(ctx, call, RetryPolicy(max_attempts=3, backoff_s=0.5, backoff_max_s=0.75))
    assert got[0] == state and got[2] == attempts and len(alarmed) == alarms
    assert got[1] is None if error_part is None else error_part in (got[1] or "")
    assert (
        delays
        == [0.5, 0.75][
            : min(
                attempts - 1,
                sum(isinstance(e, HardwareTimeoutError | ContactError) for e in errors[: attempts - 1]),
            )
        ]
    )


def test_a_database_error_in_a_step_hands_the_die_back_instead_of_failing_it(
    session_factory: Factory, lot_ecids: list[str], make_context: Callable[..., Harness]
) -> None:
    job_id = create_job(session_factory, ("characterize",))
    h = make_context()
    real = h.context.steps.characterize
    hiccups = [OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked"))]

    def flaky(call: StepCall) -> object:
        if hiccups:
            raise hiccups.pop()
        return real(call)

    h.context.steps = dataclasses.replace(h.context.steps, characterize=flaky)
    die_ids = jobs.open_die_ids(session_factory, job_id)
    with pytest.raises(OperationalError):
        process_chunk(h.context, job_id, die_ids)
    assert jobs.open_die_ids(session_factory, job_id) == die_ids  # nothing lost, nothing held
    with session_scope(session_factory) as s:
        assert s.scalar(select(func.count()).where(JobItem.state == JobState.running)) == 0
    result = process_chunk(h.context, job_id, die_ids)
    assert result.processed == die_ids and result.busy == []
    assert job_state(session_factory, job_id) == JobState.succeeded
    assert set(per_die(session_factory, Signature).values()) == {1}


def test_after_a_crash_the_restarted_runner_waits_out_the_lease_then_finishes_the_job(
    session_factory: Factory, lot_ecids: list[str], make_context: Callable[..., Harness]
) -> None:
    """The service died mid-die: that die's items stay 'running' under a claim nobody refreshes."""
    job_id = create_job(session_factory)
    die_ids = jobs.open_die_ids(session_factory, job_id)
    with session_scope(session_factory) as s:
        s.execute(update(Job).where(Job.id == job_id).values(state=JobState.running, started_at=utcnow()))
        s.execute(
            update(JobItem)
            .where(JobItem.job_id == job_id, JobItem.die_id == die_ids[0])
            .values(
                state=JobState.running, claimed_by="dead:1:x/0", heartbeat_at=utcnow(), started_at=utcnow()
            )
        )
    h = make_context(lease_s=0.5)
    t0 = time.monotonic()
    run_to_end(h)  # start() resumes the job; the held die comes back after the lease
    assert time.monotonic() - t0 >= 0.5
    assert job_state(session_factory, job_id) == JobState.succeeded
    assert set(per_die(session_factory, Signature).values()) == {1} and len(h.log.calls) == 3 * len(lot_ecids)


def test_the_supervisor_runs_a_job_nobody_sent_and_only_once(
    session_factory: Factory, lot_ecids: list[str], make_context: Callable[..., Harness]
) -> None:
    """A job whose chunks were never handed to the runner (the send after the POST failed, or another
    process created it) is found by the supervisor once it shows no activity, and run exactly once."""
    h = make_context(lease_s=1.0)
    runner = LocalRunner(h.context, workers=2, chunk_dies=4, supervise_s=0.1)
    runner.start()  # nothing to resume yet
    try:
        job_id = create_job(session_factory)  # committed, never submitted
        t0 = time.monotonic()
        deadline = t0 + 30
        while job_state(session_factory, job_id) != JobState.succeeded and time.monotonic() < deadline:
            time.sleep(0.05)
        took = time.monotonic() - t0
        assert runner.wait_idle(timeout_s=30)
        time.sleep(1.0)  # a few more supervisor rounds: a finished job is never sent again
    finally:
        runner.stop()
    assert job_state(session_factory, job_id) == JobState.succeeded
    assert 0.5 <= took < 10  # after the quiet time (half a lease), within a few rounds
    assert len(h.log.calls) == 3 * len(lot_ecids) and set(h.log.calls.values()) == {1}
    with session_scope(session_factory) as s:
        resends = s.execute(
            select(AuditEvent.actor, AuditEvent.details).where(
                AuditEvent.action == "job.resend", AuditEvent.target == f"job:{job_id}"
            )
        ).all()
    assert resends == [("supervisor", {"dies": len(lot_ecids), "runner": "local"})]


def test_the_supervisor_leaves_a_job_alone_while_the_runner_holds_its_chunks(
    session_factory: Factory, lot_ecids: list[str], make_context: Callable[..., Harness]
) -> None:
    """One worker: the second job's chunk waits in the runner's queue with no claim and no activity
    while the first job runs; it is not stalled, so it is not sent again."""
    h = make_context(lease_s=0.4, delay_s=0.03)
    runner = LocalRunner(
        h.context, workers=1, chunk_dies=12, supervise_s=0.05, quiet_s=0.01, resume_on_start=False
    )
    first = create_job(session_factory)
    second = create_job(session_factory, ("compensate",), model="kws@2")
    runner.submit(first)  # queued before the threads and the supervisor start
    runner.submit(second)
    runner.start()
    try:
        assert runner.wait_idle(timeout_s=60)
    finally:
        runner.stop()
    assert job_state(session_factory, first) == job_state(session_factory, second) == JobState.succeeded
    assert sum(h.log.calls.values()) == 4 * len(lot_ecids)  # nothing ran twice
    with session_scope(session_factory) as s:
        assert s.scalar(select(func.count()).where(AuditEvent.action == "job.resend")) == 0

"""Processing a chunk of dies: claim each die, run its steps with the retry policy, record them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Literal

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.repositories import jobs as repo
from app.db.session import session_scope
from app.db.tables import Job, JobState
from app.errors import AppError
from app.services.jobs.context import ExecutionContext, StepCall
from app.services.jobs.params import OPEN_STATES, JobParams, RetryPolicy
from hardware.driver import TRANSIENT_ERRORS, DieFault, HardwareError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkResult:
    """``processed``: dies this call worked on; ``busy``: dies another live worker holds (try again
    after the lease); ``stopped``: the job is no longer open (cancelled, finished or gone)."""

    processed: list[int] = field(default_factory=list)
    busy: list[int] = field(default_factory=list)
    stopped: bool = False


def _describe(e: BaseException) -> str:
    code = getattr(e, "code", None)
    return f"{code or type(e).__name__}: {e}"


class ClaimLost(Exception):
    """Our lease on the die ran out and another worker reclaimed it: leave the rest of it to that one."""


def _run_step(
    ctx: ExecutionContext,
    call: StepCall,
    retry: RetryPolicy,
    begin_attempt: Callable[[], int | None] | None = None,
) -> tuple[str, str | None, int]:
    """Run one step with the retry policy; returns (item state, error, attempts made here).

    ``begin_attempt`` records each attempt as it starts (so a worker killed inside a step leaves the
    attempt counted) and returns the item's attempt number, which the step receives in
    ``call.attempt``; None means the claim was lost (:class:`ClaimLost` is raised)."""
    fn = ctx.steps.for_step(call.step)
    for attempt in range(1, retry.max_attempts + 1):
        if begin_attempt is not None:
            number = begin_attempt()
            if number is None:
                raise ClaimLost(call.step)
            call = replace(call, attempt=number)
        try:
            fn(call)
            return JobState.succeeded, None, attempt
        except TRANSIENT_ERRORS as e:
            if attempt < retry.max_attempts:
                log.info("%s %s: %s; retry %d", call.ecid, call.step, _describe(e), attempt)
                ctx.sleep(retry.delay_s(attempt))
                continue
            reason = f"{call.step}: {_describe(e)} (gave up after {attempt} attempts)"
            ctx.steps.alarm(replace(call, error=e), reason, False)
            return JobState.failed, f"alarm: {reason}", attempt
        except DieFault as e:
            reason = f"{call.step}: {_describe(e)}"
            ctx.steps.alarm(replace(call, error=e), reason, True)
            return JobState.failed, f"die fault: {reason}", attempt
        except HardwareError as e:
            reason = f"{call.step}: {_describe(e)}"
            ctx.steps.alarm(replace(call, error=e), reason, False)
            return JobState.failed, f"alarm: {reason}", attempt
        except AppError as e:
            return JobState.failed, f"{call.step}: {e.code}: {e.message}", attempt
        except OperationalError:
            raise  # the database, not the die: the chunk fails, its claims go back, it runs again
        except Exception as e:
            log.exception("%s %s: unexpected error", call.ecid, call.step)
            return JobState.failed, f"{call.step}: internal error: {type(e).__name__}: {e}", attempt
    raise AssertionError("unreachable")


def _effective_force(s: Session, params: JobParams, job: Job, die_id: int, step: str) -> bool:
    """``force`` redoes work done before the job, never work this job already did: that keeps a
    forced job exactly-once when a chunk is redelivered after a crash."""
    if not params.force:
        return False
    if step == "characterize":
        return not repo.has_signature_since(s, die_id, job.created_at)
    if step == "functional-test" and params.model_id is not None:
        return not repo.has_test_since(s, die_id, params.model_id, job.created_at)
    return False


def _process_die(
    ctx: ExecutionContext,
    token: str,
    job: Job,
    params: JobParams,
    die_id: int,
    ecid: str,
    should_stop: Callable[[], bool],
) -> Literal["done", "none", "cancelled", "lost"]:
    with session_scope(ctx.factory) as s:
        now = utcnow()
        claimed = repo.claim_die(
            s,
            job_id=job.id,
            die_id=die_id,
            owner=token,
            now=now,
            stale_before=now - timedelta(seconds=ctx.lease_s),
        )
        if not claimed:
            return "none"
        states = repo.die_states(s, job.id, die_id)
    item_of = {step: item_id for item_id, step in claimed}
    todo = [step for step in params.steps if step in item_of]
    try:
        return _run_die(ctx, token, job, params, die_id, ecid, should_stop, states, item_of, todo)
    except BaseException:
        # The chunk fails (the database went away, the process is told to exit): hand the die's
        # unfinished items back at once rather than after the lease, if the database lets us.
        try:
            with session_scope(ctx.factory) as s:
                repo.release(s, item_ids=list(item_of.values()), owner=token, now=utcnow())
        except Exception:
            log.warning("job %d die %s: could not release the claim", job.id, ecid, exc_info=True)
        raise


def _run_die(
    ctx: ExecutionContext,
    token: str,
    job: Job,
    params: JobParams,
    die_id: int,
    ecid: str,
    should_stop: Callable[[], bool],
    states: dict[str, str],
    item_of: dict[str, int],
    todo: list[str],
) -> Literal["done", "cancelled", "lost"]:
    # The claim just succeeded, so the job was open then; after each step the job's state is read
    # in the transaction that records the step (four transactions per die of three steps).
    job_state: str | None = JobState.running
    for i, step in enumerate(todo):
        if job_state == JobState.cancelled or should_stop():
            with session_scope(ctx.factory) as s:
                now = utcnow()
                if job_state == JobState.cancelled:
                    for rest in todo[i:]:
                        repo.finish_item(
                            s,
                            item_id=item_of[rest],
                            owner=token,
                            state=JobState.cancelled,
                            error=None,
                            now=now,
                        )
                else:
                    repo.release(s, item_ids=[item_of[r] for r in todo[i:]], owner=token, now=now)
            return "cancelled"
        failed_before = next(
            (
                p
                for p in params.steps[: params.steps.index(step)]
                if states.get(p) in (JobState.failed, JobState.cancelled)
            ),
            None,
        )
        state: str
        error: str | None
        if failed_before is not None:
            state, error = JobState.failed.value, f"not run: {failed_before} failed"
        else:
            force = False
            if params.force:
                with session_scope(ctx.factory) as s:
                    force = _effective_force(s, params, job, die_id, step)
            item_id = item_of[step]
            call = StepCall(job.id, die_id, ecid, step, params.model, force, item_id=item_id)

            def begin_attempt(item_id: int = item_id) -> int | None:
                with session_scope(ctx.factory) as s:
                    return repo.start_attempt(s, item_id=item_id, owner=token, now=utcnow())

            try:
                state, error, _ = _run_step(ctx, call, params.retry, begin_attempt)
            except ClaimLost:
                log.warning("job %d die %s: lost the claim before %s", job.id, ecid, step)
                return "lost"
        with session_scope(ctx.factory) as s:
            kept = repo.finish_item(
                s,
                item_id=item_of[step],
                owner=token,
                state=state,
                error=error,
                now=utcnow(),
            )
            job_state = repo.state_of(s, job.id)
        if not kept:
            # Our lease expired and another worker reclaimed the die: leave the rest to it.
            log.warning("job %d die %s: lost the claim during %s", job.id, ecid, step)
            return "lost"
        states[step] = state
    return "done"


def process_chunk(
    ctx: ExecutionContext,
    job_id: int,
    die_ids: Sequence[int],
    *,
    should_stop: Callable[[], bool] = lambda: False,
) -> ChunkResult:
    """Process the open items of ``die_ids`` in job ``job_id``, die by die, step by step.

    Safe to call twice with the same arguments, concurrently or after a crash: each die's items are
    claimed atomically, finished items are skipped, and the step functions are idempotent.
    """
    with session_scope(ctx.factory) as s:
        job = repo.get(s, job_id)
        if job is None or job.state not in OPEN_STATES:
            return ChunkResult(stopped=True)
        repo.mark_started(s, job_id, utcnow())
        ecids = repo.die_ecids(s, die_ids)
    params = JobParams.from_json(job.params)
    ctx.pin_numerics()
    processed: list[int] = []
    unclaimed: list[int] = []
    stopped = False
    assert ctx.heartbeat is not None
    token = ctx.new_claim()
    ctx.heartbeat.track(token, job_id)
    try:
        for die_id in die_ids:
            if die_id not in ecids:
                continue
            if should_stop():
                stopped = True
                break
            outcome = _process_die(ctx, token, job, params, die_id, ecids[die_id], should_stop)
            if outcome == "cancelled":
                stopped = True
                break
            if outcome == "none":
                unclaimed.append(die_id)
            else:
                processed.append(die_id)
    finally:
        ctx.heartbeat.untrack(token)
    with session_scope(ctx.factory) as s:
        busy = repo.held_elsewhere(s, job_id=job_id, die_ids=unclaimed, owner=token)
        end = repo.finish_if_done(s, job_id, utcnow())
        if end is not None:
            log.info("job %d finished: %s", job_id, end)
    return ChunkResult(processed=processed, busy=busy, stopped=stopped)

"""Yields as the industry defines them, from one row per die (:class:`~app.exports.records.DieRow`).

* **Final yield**: dies whose final verdict passes / dies with a verdict. A tester alarm is "retest",
  not a verdict: a die whose only results are alarms is neither passed nor failed (it waits for a
  retest, ``n_retest_pending``), and an alarm after a verdict leaves the verdict as it was.
* **First-pass yield**: dies whose first test event was a passing verdict / dies tested at least
  once (verdict or alarm). A die that alarmed first, or failed first and passed on retest, did not
  pass first time.
* **Retests**: ``n_retested`` dies with more than one test event; ``n_alarms`` alarm events,
  ``n_alarmed`` dies with at least one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from app.exports.records import DieRow
from app.services.reporting.stats import yield_pct


@dataclass(frozen=True)
class Yields:
    n_tested: int
    """Dies with a verdict."""
    n_passed: int
    n_failed: int
    yield_pct: float | None
    """Final yield, percent."""
    n_first_tested: int
    """Dies with at least one test event (a verdict or an alarm)."""
    n_first_passed: int
    first_pass_yield_pct: float | None
    n_retested: int
    n_alarms: int
    n_alarmed: int
    n_retest_pending: int


def yields(rows: Iterable[DieRow]) -> Yields:
    tested = passed = first_tested = first_passed = retested = alarms = alarmed = pending = 0
    for r in rows:
        if r.has_verdict:
            tested += 1
            passed += bool(r.passed)
        pending += r.retest_pending
        if r.n_tests:
            first_tested += 1
            first_passed += bool(r.first_pass)
        retested += r.n_tests > 1
        alarms += r.n_alarms
        alarmed += r.n_alarms > 0
    return Yields(
        n_tested=tested,
        n_passed=passed,
        n_failed=tested - passed,
        yield_pct=yield_pct(passed, tested),
        n_first_tested=first_tested,
        n_first_passed=first_passed,
        first_pass_yield_pct=yield_pct(first_passed, first_tested),
        n_retested=retested,
        n_alarms=alarms,
        n_alarmed=alarmed,
        n_retest_pending=pending,
    )

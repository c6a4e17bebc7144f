"""The records the writers take: plain, frozen dataclasses, filled by the reporting service.

Coordinates are die-grid coordinates as registered (``Die.x``, ``Die.y``). Every export draws them
the same way: x grows to the right, y grows downward, the notch at the bottom (see docs/exports.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

ALARM_BIN = 0
"""The soft and hard bin of a tester alarm: "retest", not a die verdict (docs/domain.md section 4)."""


@dataclass(frozen=True)
class BinInfo:
    """A hard or soft bin: its number, name and whether it is a pass grade."""

    number: int
    name: str
    passed: bool


@dataclass(frozen=True)
class ParametricTest:
    """One parametric test of the test plan (an STDF PTR/TSR test number).

    ``lo_limit`` / ``hi_limit`` are the test limits in ``units``; ``None`` means no such limit (the PTR
    then carries no pass/fail for that side).
    """

    number: int
    name: str
    units: str
    lo_limit: float | None = None
    hi_limit: float | None = None

    def passes(self, value: float) -> bool | None:
        """Whether ``value`` is inside the limits; ``None`` when the test has no limits."""
        if self.lo_limit is None and self.hi_limit is None:
            return None
        return (self.lo_limit is None or value >= self.lo_limit) and (
            self.hi_limit is None or value <= self.hi_limit
        )


@dataclass(frozen=True)
class PartResult:
    """One tested die as an STDF part.

    ``results`` holds ``(test number, value)`` pairs in execution order; a test with no value for this
    die (not run, or nothing measured) is simply absent. ``test_time_ms`` is the tester time charged
    to the die (0: not known); ``site`` the STDF site number (1-255) that tested it.
    ``abnormal_end``: testing ended in a tester alarm (bin 0) without a verdict; ``passed`` is then
    meaningless and the PRR says so.
    """

    ecid: str
    x: int
    y: int
    hard_bin: int
    soft_bin: int
    passed: bool
    test_time_ms: int
    results: tuple[tuple[int, float], ...] = ()
    text: str = ""
    site: int = 1
    abnormal_end: bool = False


@dataclass(frozen=True)
class WaferResult:
    """One wafer of a lot with its tested parts (in test order), one part per die: its final verdict,
    or its alarm when it has none. ``retested``: parts tested more than once; ``aborts``: tester
    alarms during testing (every alarm event, also those later retested to a verdict)."""

    number: int
    wafer_id: str
    started_at: datetime
    finished_at: datetime
    parts: tuple[PartResult, ...]
    retested: int = 0
    aborts: int = 0


@dataclass(frozen=True)
class WaferConfig:
    """Coordinate conventions of the wafer maps (the STDF WCR).

    ``pos_x`` / ``pos_y`` name the direction in which x / y grow ("R"ight, "L"eft, "U"p, "D"own);
    ``flat`` is where the notch or flat points. ``center_x`` / ``center_y`` are the centre die.
    """

    pos_x: Literal["R", "L"] = "R"
    pos_y: Literal["U", "D"] = "D"
    flat: Literal["U", "D", "L", "R", " "] = "D"
    center_x: int = 0
    center_y: int = 0


@dataclass(frozen=True)
class SiteDescription:
    """The STDF SDR of one site group: its site numbers and the equipment behind them.

    ``card_type`` / ``card_id`` (SDR ``CARD_TYP`` / ``CARD_ID``): the tester (vendor and model) and
    the resources the sites reach it through; ``extra_type`` / ``extra_id`` (``EXTR_TYP`` /
    ``EXTR_ID``): the driver and its version.
    """

    site_numbers: tuple[int, ...]
    head: int = 1
    group: int = 1
    handler_type: str = ""
    handler_id: str = ""
    card_type: str = ""
    card_id: str = ""
    extra_type: str = ""
    extra_id: str = ""


@dataclass(frozen=True)
class LotResult:
    """A lot's test data with one model: what one STDF file holds.

    ``job_name`` / ``job_rev`` (MIR ``JOB_NAM`` / ``JOB_REV``, the test program) are the model's name
    and version: each model's functional test is its own test program on the same part type.
    ``node_name``, ``tester_type``, ``serial_number`` and ``setup_id`` (MIR ``NODE_NAM``, ``TSTR_TYP``,
    ``SERL_NUM``, ``SETUP_ID``) describe the tester; ``sites`` becomes the SDR (none: no SDR).
    """

    lot_id: str
    product: str
    setup_at: datetime
    started_at: datetime
    finished_at: datetime
    tests: tuple[ParametricTest, ...]
    wafers: tuple[WaferResult, ...]
    soft_bins: Mapping[int, BinInfo]
    hard_bins: Mapping[int, BinInfo]
    tester_type: str = "cimcal"
    node_name: str = "cimcal"
    job_name: str = "cimcal"
    job_rev: str = ""
    exec_type: str = "cimcal"
    exec_ver: str = ""
    test_code: str = "CAL"
    serial_number: str = ""
    setup_id: str = ""
    sites: SiteDescription | None = None
    wafer_config: WaferConfig = field(default_factory=WaferConfig)


@dataclass(frozen=True)
class WaferBinMap:
    """One wafer's soft-bin map (what an E142 file holds).

    ``bins`` maps every die site to its soft bin with ``model`` (``name@version``), or to ``None`` for a
    die that has no functional-test result with it yet. Sites not in ``bins`` carry no die.
    """

    lot_id: str
    wafer_number: int
    substrate_id: str
    bins: Mapping[tuple[int, int], int | None]
    bin_info: Mapping[int, BinInfo]
    product: str = ""
    model: str = ""


@dataclass(frozen=True)
class DieRow:
    """One die's results with one model, flat: a row of the per-die CSV and Parquet tables.

    ``model`` (``name@version``) is the model the row's results are for, on every row of a report of
    that model, tested or not (``None`` only when the lot has no test at all). ``accuracy_before`` /
    ``accuracy_after`` are fractions (0..1) of the model's validation set classified correctly by the
    die running the uncompensated model / its die-specific (calibrated) weight image, as measured:
    ``None`` when not measured (an alarm or a die fault measures nothing). Bins, ``passed``, test time,
    ``tested_at`` and ``site`` are the die's *final verdict*: its latest calibrated (or die-fault)
    result with the model, or, failing that, its latest result before calibration. A die whose only
    results are tester alarms has no verdict: soft and hard bin 0 (:data:`ALARM_BIN`, "retest"),
    ``passed`` ``None``, no test time, ``tested_at`` / ``site`` / ``alarm_code`` / ``reason`` of its
    latest alarm. Every field of a step the die has not been through is ``None``. The signature
    figures are the die's, whatever the model; ``retries`` the driver calls repeated while
    characterizing.

    Test history with the model: ``n_tests`` counts the die's test events (verdicts and alarms; the
    measurement before calibration belongs to the calibrated test it precedes), ``n_alarms`` the
    alarms among them, ``first_pass`` whether the first event was a passing verdict (``None``:
    never tested). A die is *retested* when ``n_tests > 1``.
    """

    lot_id: str
    wafer: int
    x: int
    y: int
    ecid: str
    model: str | None
    soft_bin: int | None
    hard_bin: int | None
    passed: bool | None
    accuracy_before: float | None
    accuracy_after: float | None
    test_time_s: float | None
    tested_at: datetime | None
    site: int | None
    signature_version: int | None
    reads: int | None
    retries: int | None
    tester_s: float | None
    n_dead_cols: int | None
    n_stuck_cells: int | None
    offset_spread_mac: float | None
    characterized_at: datetime | None
    first_pass: bool | None = None
    n_tests: int = 0
    n_alarms: int = 0
    alarm_code: str | None = None
    reason: str | None = None

    @property
    def has_verdict(self) -> bool:
        """Tested to a verdict (pass or fail), not only alarmed."""
        return self.soft_bin is not None and self.soft_bin != ALARM_BIN

    @property
    def retest_pending(self) -> bool:
        """Only tester alarms so far: the die waits for a retest."""
        return self.soft_bin == ALARM_BIN

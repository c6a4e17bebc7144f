"""A small demo lot for the dashboard and export tests: circular wafers with dies, signatures, weight
images, functional tests before and after calibration, and a running job. Dies alternate between two
test sites of one tester (:data:`DEMO_TESTERS`), recorded as provenance.

Lots and signatures go through the services (``register_lot``, ``record_signature``; signature blobs
are real :class:`app.calibration.signature.Signature` bytes when that package is present). Models,
images, test results and jobs have no service yet and are written through the ORM.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy.orm import Session

from app.db.repositories import models as models_repo
from app.db.tables import Die, Image, Job, JobItem, JobState, Model, Signature, TestResult, Wafer
from app.exports.records import ALARM_BIN
from app.services import lots, signatures
from app.services import provenance as provenance_service
from app.services.hardware import TesterProvenance
from app.services.lots import WaferSpec, circular_sites

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)

DEMO_TESTERS = tuple(
    TesterProvenance(
        driver="acme",
        driver_version="2.4.1",
        vendor="ACME Test Systems",
        model="CIM-9",
        serial="A9-0042",
        site=site,
        resource=f"TCPIP0::10.0.0.{5 + site}::INSTR",
        options_sha256=hashlib.sha256(b"demo options").hexdigest(),
        host="station-07",
    )
    for site in (0, 1)
)
"""The two test sites of the demo station: die ``i`` of the lot is measured and tested on site ``i % 2``."""


@dataclass(frozen=True)
class DieExpect:
    """What the database holds for one die (for the assertions)."""

    ecid: str
    wafer: int
    x: int
    y: int
    characterized: bool
    offset_spread_mac: float | None = None
    n_dead_cols: int | None = None
    n_stuck_cells: int | None = None
    tester_s: float | None = None
    reads: int | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    soft_bin: int | None = None
    hard_bin: int | None = None
    test_time_s: float | None = None
    site: int | None = None
    retries: int | None = None
    first_pass: bool | None = None
    n_tests: int = 0
    n_alarms: int = 0
    alarm_code: str | None = None


@dataclass
class DemoLot:
    """What the demo lot holds for one model (``model``, name@version)."""

    lot_id: str
    wafers: list[int]
    dies: dict[str, DieExpect] = field(default_factory=dict)
    job_id: int | None = None
    model: str = "kws-bnn@1.0.0"

    def on_wafer(self, number: int) -> list[DieExpect]:
        return [d for d in self.dies.values() if d.wafer == number]

    @property
    def tested(self) -> list[DieExpect]:
        """Dies with a verdict (a tester alarm, bin 0, is "retest", not a verdict)."""
        return [d for d in self.dies.values() if d.soft_bin is not None and d.soft_bin != ALARM_BIN]

    @property
    def with_result(self) -> list[DieExpect]:
        """Dies with a verdict or only alarms: the parts of an STDF file, the dies of a pareto."""
        return [d for d in self.dies.values() if d.soft_bin is not None]

    @property
    def alarmed(self) -> list[DieExpect]:
        """Dies whose only result is a tester alarm."""
        return [d for d in self.dies.values() if d.soft_bin == ALARM_BIN]


def demo_wafer_specs(n_wafers: int = 3, diameter: int = 8) -> list[WaferSpec]:
    return [
        WaferSpec(n, circular_sites(diameter), {"kind": "circular", "diameter": diameter})
        for n in range(1, n_wafers + 1)
    ]


def register_demo_lot(
    session: Session, lot_id: str = "DEMO001", n_wafers: int = 3, diameter: int = 8
) -> None:
    lots.register_lot(
        session,
        lot_id=lot_id,
        product="KWS-BCIM-1",
        wafers=demo_wafer_specs(n_wafers, diameter),
        actor="demo",
    )


def _signature_blob(rng: np.random.Generator, spread: float, n_dead: int, n_stuck: int, ecid: str) -> bytes:
    try:
        from app.calibration.signature import Signature, StuckCells
        from hardware.chip import ChipGeometry
    except ImportError:
        return f"demo-signature:{ecid}".encode()
    g = ChipGeometry(n_macros=4, rows=64, cols=16, spare_cols=2)
    mp = (g.n_macros, g.phys_cols)
    dead = np.zeros(mp, bool)
    dead.reshape(-1)[rng.choice(dead.size, size=n_dead, replace=False)] = True
    sm = rng.integers(0, g.n_macros, n_stuck)
    return Signature(
        geometry=g,
        gain=1.0 + 0.03 * rng.standard_normal(mp),
        offset_mac=spread * rng.standard_normal(mp),
        noise_sigma_mac=np.full(g.n_macros, 1.0),
        cell_sigma=0.06,
        cell_residual_sigma=0.06,
        dead_cols=dead,
        dead_code=np.zeros(mp, np.int16),
        stuck=StuckCells(
            sm,
            rng.integers(0, g.rows, n_stuck),
            rng.integers(0, g.phys_cols, n_stuck),
            np.where(rng.random(n_stuck) < 0.5, -1, 1),
            np.ones(n_stuck),
        ),
        meta={"ecid": ecid},
    ).to_bytes()


def _bins(accuracy_after: float, n_dead: int) -> tuple[int, int]:
    """(soft, hard): 1 / 2 pass grades, 11 accuracy fail, 12 too many dead columns."""
    if n_dead > 3:
        return 12, 2
    if accuracy_after >= 0.80:
        return 1, 1
    if accuracy_after >= 0.70:
        return 2, 1
    return 11, 2


def add_demo_results(session: Session, lot_id: str = "DEMO001", seed: int = 7) -> DemoLot:
    """Characterize, calibrate and test most dies of a registered lot; returns what was stored.

    Every 7th die stays untested (not characterized), every 11th is characterized but not tested; one
    die on the last wafer ends in a tester alarm (soft bin 0, nothing measured: no accuracy, no test
    time) and one on the first wafer alarmed first and passed its retest (first pass fails, final
    passes). Offsets spread and accuracy drops toward the wafer edge.
    """
    rng = np.random.default_rng(seed)
    model = models_repo.add(
        session,
        Model(
            name="kws-bnn",
            version="1.0.0",
            blob=b"demo",
            sha256=hashlib.sha256(b"demo").hexdigest(),
            size_bytes=4,
            class_names=["yes", "no"],
            software_accuracy=0.9,
        ),
    )
    dies = list(
        session.query(Die).join(Wafer).filter(Wafer.lot_id == lot_id).order_by(Wafer.number, Die.y, Die.x)
    )
    demo = DemoLot(lot_id=lot_id, wafers=sorted({d.wafer.number for d in dies}))
    radius = max(math.hypot(d.x, d.y) for d in dies) or 1.0
    t = T0
    alarm_done = retest_done = False
    job = Job(
        kind="calibrate", state=JobState.running, params={"lot_id": lot_id}, created_by="demo", created_at=T0
    )
    session.add(job)
    session.flush()
    demo.job_id = job.id
    for i, die in enumerate(dies):
        t += timedelta(seconds=30)
        wafer = die.wafer.number
        if i % 7 == 3:
            demo.dies[die.ecid] = DieExpect(die.ecid, wafer, die.x, die.y, characterized=False)
            session.add(JobItem(job_id=job.id, die_id=die.id, step="characterize", state=JobState.queued))
            continue
        r = math.hypot(die.x, die.y) / radius
        spread = float(0.8 + 0.6 * r**2 + 0.05 * rng.standard_normal())
        n_dead = int(rng.poisson(0.6 + 2.0 * r**3))
        n_stuck = int(rng.poisson(3 + 4 * r))
        reads = int(20_000 + rng.integers(0, 2_000))
        tester_s = round(1.5 + 0.3 * rng.random(), 3)
        tester = DEMO_TESTERS[i % 2]
        retries = i % 3
        sig = signatures.record_signature(
            session,
            die_id=die.id,
            blob=_signature_blob(rng, spread, n_dead, n_stuck, die.ecid),
            reads=reads,
            tester_s=tester_s,
            n_dead_cols=n_dead,
            n_stuck_cells=n_stuck,
            offset_spread_mac=spread,
            actor="demo",
            retries=retries,
            provenance=tester,
        )
        sig.created_at = t
        session.add(JobItem(job_id=job.id, die_id=die.id, step="characterize", state=JobState.succeeded))
        if i % 11 == 5:
            demo.dies[die.ecid] = DieExpect(
                die.ecid, wafer, die.x, die.y, True, spread, n_dead, n_stuck, tester_s, reads, retries=retries
            )
            session.add(JobItem(job_id=job.id, die_id=die.id, step="test", state=JobState.running))
            continue
        before = float(np.clip(0.45 - 0.2 * r + 0.05 * rng.standard_normal(), 0.05, 0.95))
        after = float(np.clip(0.90 - 0.25 * r**2 + 0.03 * rng.standard_normal(), 0.05, 0.99))
        soft, hard = _bins(after, n_dead)
        test_time_s = round(0.8 + 0.1 * rng.random(), 3)
        image = Image(
            die_id=die.id,
            model_id=model.id,
            signature_id=sig.id,
            ecid=die.ecid,
            signature_sha256=sig.sha256,
            content_sha256=hashlib.sha256(f"image:{die.ecid}".encode()).hexdigest(),
            size_bytes=65_536,
            created_at=t + timedelta(seconds=5),
            provenance_id=sig.provenance_id,
        )
        session.add(image)
        session.flush()
        tester_id = provenance_service.record(session, tester).id
        alarm = TestResult(
            die_id=die.id,
            model_id=model.id,
            image_id=None,
            accuracy=None,
            hard_bin=ALARM_BIN,
            soft_bin=ALARM_BIN,
            test_time_s=None,
            reason="functional-test: hardware_timeout: run_network did not complete within 5 s",
            alarm_code="hardware_timeout",
            step="functional-test",
            created_at=t + timedelta(seconds=8),
            provenance_id=tester_id,
        )
        if not alarm_done and wafer == demo.wafers[-1]:
            alarm_done = True
            session.add(alarm)
            session.add(JobItem(job_id=job.id, die_id=die.id, step="test", state=JobState.failed))
            demo.dies[die.ecid] = DieExpect(
                die.ecid,
                wafer,
                die.x,
                die.y,
                True,
                spread,
                n_dead,
                n_stuck,
                tester_s,
                reads,
                None,
                None,
                ALARM_BIN,
                ALARM_BIN,
                None,
                tester.site,
                retries,
                first_pass=False,
                n_tests=1,
                n_alarms=1,
                alarm_code="hardware_timeout",
            )
            continue
        retested = not retest_done and soft == 1 and wafer == demo.wafers[0]
        if retested:
            retest_done = True
            session.add(alarm)
        session.add_all(
            [
                TestResult(
                    die_id=die.id,
                    model_id=model.id,
                    image_id=None,
                    accuracy=before,
                    hard_bin=2,
                    soft_bin=11,
                    test_time_s=test_time_s,
                    created_at=t + timedelta(seconds=10),
                    provenance_id=tester_id,
                ),
                TestResult(
                    die_id=die.id,
                    model_id=model.id,
                    image_id=image.id,
                    accuracy=after,
                    hard_bin=hard,
                    soft_bin=soft,
                    test_time_s=test_time_s,
                    created_at=t + timedelta(seconds=20),
                    provenance_id=tester_id,
                ),
            ]
        )
        session.add(JobItem(job_id=job.id, die_id=die.id, step="test", state=JobState.succeeded))
        demo.dies[die.ecid] = DieExpect(
            die.ecid,
            wafer,
            die.x,
            die.y,
            True,
            spread,
            n_dead,
            n_stuck,
            tester_s,
            reads,
            before,
            after,
            soft,
            hard,
            test_time_s,
            tester.site,
            retries,
            first_pass=not retested and 1 <= soft <= 9,
            n_tests=2 if retested else 1,
            n_alarms=int(retested),
        )
    session.flush()
    return demo


def build_demo_lot(
    session: Session, lot_id: str = "DEMO001", n_wafers: int = 3, diameter: int = 8
) -> DemoLot:
    register_demo_lot(session, lot_id, n_wafers, diameter)
    return add_demo_results(session, lot_id)


SECOND_MODEL = "digits-bnn@1"
SECOND_MODEL_BINS = {True: (3, 1), False: (13, 3)}
"""(soft, hard) of the second model: pass grade 3 or fail bin 13, bins the first model never gives."""


def add_second_model_results(session: Session, demo: DemoLot, model: str = SECOND_MODEL) -> DemoLot:
    """Test every other characterized die of the demo lot (including some the first model left untested)
    with a second model, an hour after the first, with bins of its own (:data:`SECOND_MODEL_BINS`).

    Returns the lot as seen with the second model: the same dies and signature figures, that model's
    accuracies and bins. Fewer dies are tested than with the first model, so the first stays the
    lot's most-tested model.
    """
    name, version = model.split("@")
    # The live server registers the station's reference models at start-up: use a stored one as is.
    row = models_repo.get(session, name, version) or models_repo.add(
        session,
        Model(
            name=name,
            version=version,
            blob=model.encode(),
            sha256=hashlib.sha256(model.encode()).hexdigest(),
            size_bytes=len(model),
            class_names=[str(d) for d in range(10)],
            software_accuracy=0.95,
        ),
    )
    rng = np.random.default_rng(11)
    out = dataclasses.replace(demo, dies={}, model=model, job_id=None)
    by_ecid = {d.ecid: d for d in session.query(Die).join(Wafer).filter(Wafer.lot_id == demo.lot_id)}
    characterized = [d for d in demo.dies.values() if d.characterized]
    chosen = {d.ecid for d in characterized[::2]}
    for d in demo.dies.values():
        if d.ecid not in chosen:
            out.dies[d.ecid] = dataclasses.replace(
                d,
                accuracy_before=None,
                accuracy_after=None,
                soft_bin=None,
                hard_bin=None,
                test_time_s=None,
                site=None,
                first_pass=None,
                n_tests=0,
                n_alarms=0,
                alarm_code=None,
            )
            continue
        die = by_ecid[d.ecid]
        sig = session.query(Signature).filter(Signature.die_id == die.id, Signature.is_current).one()
        t = sig.created_at + timedelta(hours=1)
        before = float(np.clip(0.30 + 0.05 * rng.standard_normal(), 0.05, 0.95))
        after = float(np.clip(0.75 + 0.1 * rng.standard_normal(), 0.05, 0.99))
        soft, hard = SECOND_MODEL_BINS[after >= 0.75]
        test_time_s = round(0.5 + 0.1 * rng.random(), 3)
        image = Image(
            die_id=die.id,
            model_id=row.id,
            signature_id=sig.id,
            ecid=die.ecid,
            signature_sha256=sig.sha256,
            content_sha256=hashlib.sha256(f"image:{die.ecid}:{model}".encode()).hexdigest(),
            size_bytes=32_768,
            created_at=t,
        )
        session.add(image)
        session.flush()
        for image_id, accuracy, bins, at in (
            (None, before, (13, 3), t + timedelta(seconds=10)),
            (image.id, after, (soft, hard), t + timedelta(seconds=20)),
        ):
            session.add(
                TestResult(
                    die_id=die.id,
                    model_id=row.id,
                    image_id=image_id,
                    accuracy=accuracy,
                    hard_bin=bins[1],
                    soft_bin=bins[0],
                    test_time_s=test_time_s,
                    created_at=at,
                )
            )
        out.dies[d.ecid] = dataclasses.replace(
            d,
            accuracy_before=before,
            accuracy_after=after,
            soft_bin=soft,
            hard_bin=hard,
            test_time_s=test_time_s,
            site=None,  # the second model's tests record no provenance
            first_pass=soft == 3,
            n_tests=1,
            n_alarms=0,
            alarm_code=None,
        )
    session.flush()
    return out

"""Which lot, wafer and model a report covers.

Every view and export is of one model, named ``name@version``. When the caller names none:

* no model was tested on the lot: nothing is tested (the report names no model);
* exactly one was: that one;
* several were: the dashboard views show the most-tested one (most dies tested; ties: the one tested
  most recently, then the first by name@version) and say which, with every model tested and its yield;
  the export files refuse with 422 ``model_required`` listing the models, because a file goes to a
  program (a yield tool, a picker) that would otherwise take one model's bins for the lot's.

A named model that exists but was not tested on the lot is a valid filter: its report has no tested
die. An unknown model is 404, a malformed reference 422 ``invalid_model_ref``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy.orm import Session

from app.db.repositories import lots as lots_repo
from app.db.repositories import models as models_repo
from app.db.repositories import reporting as repo
from app.db.repositories.reporting import ModelCounts
from app.db.tables import Lot
from app.errors import InvalidInputError, NotFoundError
from app.services.reporting.bins import ALARM_BIN, PASS_BINS
from app.services.reporting.stats import yield_pct

MODEL_REF_PATTERN = r"^[^@\s]{1,64}@[^@\s]{1,32}$"
_MODEL_REF = re.compile(MODEL_REF_PATTERN)


class WhenSeveral(StrEnum):
    """What a report does when the caller names no model and the lot was tested with several."""

    most_tested = "most_tested"
    require = "require"


@dataclass(frozen=True)
class ModelChoice:
    """The model a report is of."""

    id: int
    name: str
    version: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class ModelTested:
    """A model tested on a lot: dies tested with it, dies whose final result with it passes, yield."""

    model: str
    n_tested: int
    n_passed: int
    yield_pct: float | None
    last_tested_at: datetime


@dataclass(frozen=True)
class LotScope:
    lot: Lot
    models: list[ModelTested]
    """Every model tested on the lot, most-tested first."""
    model: ModelChoice | None
    """The model the report is of; ``None`` when the lot has no test and none was named."""

    @property
    def model_ref(self) -> str | None:
        return None if self.model is None else self.model.ref


def parse_model_ref(ref: str) -> tuple[str, str]:
    """``"kws-bnn@1"`` -> ``("kws-bnn", "1")``."""
    if not _MODEL_REF.match(ref):
        raise InvalidInputError(f"model {ref!r} is not name@version", code="invalid_model_ref")
    name, _, version = ref.partition("@")
    return name, version


def get_lot(session: Session, lot_id: str) -> Lot:
    lot = lots_repo.get(session, lot_id)
    if lot is None:
        raise NotFoundError(f"no lot {lot_id!r}")
    return lot


def require_wafer(lot: Lot, number: int) -> None:
    if number not in (w.number for w in lot.wafers):
        raise NotFoundError(f"lot {lot.lot_id!r} has no wafer {number}")


def find_model(session: Session, ref: str) -> ModelChoice:
    name, version = parse_model_ref(ref)
    model = models_repo.get(session, name, version)
    if model is None:
        raise NotFoundError(f"no model {ref}")
    return ModelChoice(model.id, model.name, model.version)


def rank(counts: Iterable[ModelCounts]) -> list[ModelCounts]:
    """Most dies tested first; ties: tested most recently first, then by name@version."""
    by_name = sorted(counts, key=lambda c: (c.name, c.version))
    return sorted(by_name, key=lambda c: (c.n_tested, c.last_tested_at), reverse=True)


def model_tested(c: ModelCounts) -> ModelTested:
    return ModelTested(
        model=f"{c.name}@{c.version}",
        n_tested=c.n_tested,
        n_passed=c.n_passed,
        yield_pct=yield_pct(c.n_passed, c.n_tested),
        last_tested_at=c.last_tested_at,
    )


def default_model(
    lot_id: str, ranked: Sequence[ModelCounts], when_several: WhenSeveral
) -> ModelChoice | None:
    """The model of a report that names none, from the lot's models as :func:`rank` orders them."""
    if not ranked:
        return None
    if len(ranked) > 1 and when_several is WhenSeveral.require:
        listed = ", ".join(f"{c.name}@{c.version}" for c in ranked)
        raise InvalidInputError(
            f"lot {lot_id!r} was tested with {len(ranked)} models ({listed}); choose one with "
            "?model=name@version",
            code="model_required",
            details={"models": [{"model": f"{c.name}@{c.version}", "n_tested": c.n_tested} for c in ranked]},
        )
    first = ranked[0]
    return ModelChoice(first.model_id, first.name, first.version)


def lot_scope(session: Session, lot_id: str, model: str | None, *, when_several: WhenSeveral) -> LotScope:
    """The lot, the models tested on it and the model to report (``model`` or the default)."""
    lot = get_lot(session, lot_id)
    chosen = find_model(session, model) if model is not None else None
    ranked = rank(repo.model_counts(session, [lot.lot_id], pass_bins=PASS_BINS, alarm_bin=ALARM_BIN))
    if chosen is None:
        chosen = default_model(lot.lot_id, ranked, when_several)
    return LotScope(lot=lot, models=[model_tested(c) for c in ranked], model=chosen)

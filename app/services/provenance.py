"""Recording which tester measured: a :class:`TesterProvenance` becomes a shared ``provenance`` row."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from sqlalchemy.orm import Session

from app.db.repositories import provenance as repo
from app.db.tables import Provenance
from app.services.hardware import TesterProvenance


def key_sha256(prov: TesterProvenance) -> str:
    """SHA-256 of every field as canonical JSON: equal provenance, equal key."""
    text = json.dumps(dataclasses.asdict(prov), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def record(session: Session, prov: TesterProvenance) -> Provenance:
    """The provenance row of ``prov`` (stored on first use) in the caller's transaction."""
    return repo.ensure(
        session,
        Provenance(
            key_sha256=key_sha256(prov),
            driver=prov.driver[:64],
            driver_version=prov.driver_version[:64],
            vendor=prov.vendor[:128],
            model=prov.model[:128],
            serial=prov.serial[:128],
            site=prov.site,
            resource=prov.resource,
            options_sha256=prov.options_sha256,
            host=prov.host[:255],
            info=dict(prov.info),
        ),
    )


def from_row(row: Provenance) -> TesterProvenance:
    return TesterProvenance(
        driver=row.driver,
        driver_version=row.driver_version,
        vendor=row.vendor,
        model=row.model,
        serial=row.serial,
        site=row.site,
        resource=row.resource,
        options_sha256=row.options_sha256,
        host=row.host,
        info={str(k): str(v) for k, v in (row.info or {}).items()},
    )

"""Recording a die's signature: a new version becomes current, the previous one is kept as history."""

from __future__ import annotations

import hashlib

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.repositories import audit, dies, signatures
from app.db.tables import Signature
from app.errors import ConflictError, NotFoundError
from app.services import provenance as provenance_service
from app.services.changes import mark_changed
from app.services.hardware import TesterProvenance


def record_signature(
    session: Session,
    *,
    die_id: int,
    blob: bytes,
    reads: int,
    tester_s: float,
    n_dead_cols: int,
    n_stuck_cells: int,
    offset_spread_mac: float,
    actor: str,
    retries: int = 0,
    provenance: TesterProvenance | None = None,
) -> Signature:
    """Store ``blob`` as the die's current signature, measured by ``provenance`` with ``retries``
    driver calls repeated after transient errors.

    Concurrent calls for one die queue on the die's row lock, so each gets the next version and
    exactly one stays current. A writer that skipped the lock would hit the partial unique index
    ``uq_signature_current_die`` instead; that surfaces as a 409 the caller may retry.
    """
    die = dies.lock(session, die_id)
    if die is None:
        raise NotFoundError(f"no die with id {die_id}")
    version = signatures.last_version(session, die_id) + 1
    prov = None if provenance is None else provenance_service.record(session, provenance)
    try:
        signatures.retire_current(session, die_id)
        sig = signatures.add(
            session,
            Signature(
                die_id=die_id,
                version=version,
                is_current=True,
                blob=blob,
                sha256=hashlib.sha256(blob).hexdigest(),
                reads=reads,
                tester_s=tester_s,
                n_dead_cols=n_dead_cols,
                n_stuck_cells=n_stuck_cells,
                offset_spread_mac=offset_spread_mac,
                retries=retries,
                provenance_id=None if prov is None else prov.id,
            ),
        )
    except IntegrityError as e:
        raise ConflictError(
            f"die {die.ecid} got another signature concurrently; retry", code="concurrent_update"
        ) from e
    details: dict[str, object] = {"version": version, "retries": retries}
    if prov is not None:
        details.update(driver=prov.driver, serial=prov.serial, site=prov.site)
    audit.add(session, actor=actor, action="signature.record", target=die.ecid, details=details)
    mark_changed(session)  # the die's current image changes: cached image answers go
    return sig

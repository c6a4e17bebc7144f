"""The audit trail of mutating calls."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.db.tables import AuditEvent


def add(
    session: Session, *, actor: str, action: str, target: str, details: dict[str, Any] | None = None
) -> None:
    session.add(AuditEvent(actor=actor[:64], action=action, target=target[:128], details=details or {}))

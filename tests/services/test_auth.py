from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.tables import ApiKey, AuditEvent, Role
from app.errors import AuthenticationError, ConflictError, PermissionDeniedError
from app.services import auth


def test_only_the_hash_and_the_public_prefix_are_stored(session: Session) -> None:
    row, raw = auth.create_key(session, role=Role.station, name="tester-07", actor="admin")
    assert raw.startswith(row.prefix) and len(row.prefix) == auth.PREFIX_LEN
    stored = session.scalars(select(ApiKey)).one()
    assert raw not in {stored.prefix, stored.key_sha256, stored.name}
    assert stored.key_sha256 == auth.hash_key(raw)
    assert auth.authenticate(session, raw) == auth.Principal(Role.station, "tester-07", row.prefix)


def test_wrong_missing_and_revoked_keys_are_refused(session: Session) -> None:
    row, raw = auth.create_key(session, role=Role.viewer, name="v", actor="admin")
    for bad in (None, "", raw[:-1] + ("A" if raw[-1] != "A" else "B"), "cim_00000000_" + "x" * 40):
        with pytest.raises(AuthenticationError):
            auth.authenticate(session, bad)
    auth.revoke_key(session, prefix=row.prefix, actor="admin")
    with pytest.raises(AuthenticationError) as e:
        auth.authenticate(session, raw)
    assert e.value.code == "api_key_revoked"
    actions = [a.action for a in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert actions == ["api_key.create", "api_key.revoke"]


def test_admin_may_do_everything_and_others_only_their_part() -> None:
    def principal(role: Role) -> auth.Principal:
        return auth.Principal(role, "x", "cim_x")

    assert auth.authorize(principal(Role.admin), frozenset({Role.station})).role is Role.admin
    assert auth.authorize(principal(Role.station), frozenset({Role.station})).role is Role.station
    with pytest.raises(PermissionDeniedError):
        auth.authorize(principal(Role.viewer), frozenset({Role.station, Role.engineer}))
    with pytest.raises(PermissionDeniedError):
        auth.authorize(principal(Role.engineer), frozenset())


def test_bootstrap_key_is_registered_once(session: Session) -> None:
    raw = "cim_bootstrp_" + "k" * 40
    auth.ensure_key(session, raw_key=raw, role=Role.admin, name="bootstrap")
    auth.ensure_key(session, raw_key=raw, role=Role.admin, name="bootstrap")
    assert auth.authenticate(session, raw).role is Role.admin
    with pytest.raises(ConflictError):
        auth.ensure_key(session, raw_key=raw[:-1] + "j", role=Role.admin, name="bootstrap")

"""API keys: creation (the plaintext is shown once), authentication and role checks.

A key looks like ``cim_1a2b3c4d_<43 random characters>``. Its first :data:`PREFIX_LEN` characters
are public (they name the key in listings and audit rows and find its row); only the SHA-256 of the
whole key is stored. 256 random bits make a plain hash sufficient (no key stretching needed).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.repositories import api_keys, audit
from app.db.tables import ApiKey, Role
from app.errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from app.services.changes import mark_changed

PREFIX_LEN = 12
MIN_KEY_LEN = 32


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's role, name and public prefix."""

    role: Role
    name: str
    prefix: str

    @property
    def actor(self) -> str:
        """How audit rows name the caller."""
        return f"{self.name} ({self.prefix})"


ANONYMOUS_ADMIN = Principal(role=Role.admin, name="anonymous", prefix="auth-disabled")


def generate_key() -> str:
    return f"cim_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def create_key(
    session: Session, *, role: Role, name: str, actor: str, raw_key: str | None = None
) -> tuple[ApiKey, str]:
    """Register a key; returns the row and the plaintext key (never stored, print it once)."""
    raw = raw_key or generate_key()
    if len(raw) < MIN_KEY_LEN:
        raise InvalidInputError(f"an API key needs at least {MIN_KEY_LEN} characters", code="weak_api_key")
    prefix = raw[:PREFIX_LEN]
    if api_keys.get_by_prefix(session, prefix) is not None:
        raise ConflictError(f"a key with prefix {prefix!r} exists", code="api_key_exists")
    row = api_keys.add(session, ApiKey(prefix=prefix, key_sha256=hash_key(raw), role=role.value, name=name))
    audit.add(session, actor=actor, action="api_key.create", target=prefix, details={"role": role.value})
    return row, raw


def ensure_key(session: Session, *, raw_key: str, role: Role, name: str) -> None:
    """Register ``raw_key`` unless it is already registered (the bootstrap admin key at start-up)."""
    row = api_keys.get_by_prefix(session, raw_key[:PREFIX_LEN])
    if row is None:
        create_key(session, role=role, name=name, actor="system", raw_key=raw_key)
    elif not hmac.compare_digest(row.key_sha256, hash_key(raw_key)):
        raise ConflictError("another key already uses the bootstrap key's prefix", code="api_key_exists")


def authenticate(session: Session, raw_key: str | None) -> Principal:
    if not raw_key:
        raise AuthenticationError("missing API key: send it in the X-API-Key header")
    if not (raw_key.isascii() and raw_key.isprintable()):  # keys are printable ASCII; NUL breaks SQL
        raise AuthenticationError("invalid API key")
    row = api_keys.get_by_prefix(session, raw_key[:PREFIX_LEN])
    # compare_digest even on a miss would not hide much: the prefix is public by design.
    if row is None or not hmac.compare_digest(row.key_sha256, hash_key(raw_key)):
        raise AuthenticationError("invalid API key")
    if row.revoked_at is not None:
        raise AuthenticationError("API key revoked", code="api_key_revoked")
    return Principal(role=Role(row.role), name=row.name, prefix=row.prefix)


def authorize(principal: Principal, allowed: frozenset[Role]) -> Principal:
    """Pass ``principal`` if its role is allowed; admin is allowed everything."""
    if principal.role is Role.admin or principal.role in allowed:
        return principal
    need = ", ".join(sorted(r.value for r in allowed | {Role.admin}))
    raise PermissionDeniedError(
        f"role {principal.role.value!r} may not do this (needs one of: {need})",
        details={"role": principal.role.value, "allowed": sorted(r.value for r in allowed | {Role.admin})},
    )


def list_keys(session: Session, *, include_revoked: bool = False) -> list[ApiKey]:
    return api_keys.list_page(session, include_revoked=include_revoked, limit=None, offset=0)[0]


def page_keys(
    session: Session, *, include_revoked: bool, limit: int, offset: int
) -> tuple[list[ApiKey], int]:
    """One page of keys, oldest first, and how many there are."""
    return api_keys.list_page(session, include_revoked=include_revoked, limit=limit, offset=offset)


def revoke_key(session: Session, *, prefix: str, actor: str) -> ApiKey:
    row = api_keys.get_by_prefix(session, prefix)
    if row is None:
        raise NotFoundError(f"no API key with prefix {prefix!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        mark_changed(session)  # cached principals go when the revocation commits
        audit.add(session, actor=actor, action="api_key.revoke", target=prefix)
    return row

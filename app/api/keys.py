"""/v1/keys: API keys (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse

from app.api.deps import AdminAccess, SessionDep
from app.api.idempotency import IdempotencyDep
from app.api.schemas.common import NOT_FOUND
from app.api.schemas.keys import KeyCreated, KeyIn, KeyOut
from app.db.tables import Role
from app.services import auth

router = APIRouter(prefix="/keys", tags=["keys"])


@router.post("", status_code=201, response_model=KeyCreated)
def create_key(
    body: KeyIn, session: SessionDep, principal: AdminAccess, idem: IdempotencyDep
) -> JSONResponse:
    """Create a key. The response holds the key itself, this once; only its hash is stored."""

    def action() -> KeyCreated:
        row, raw = auth.create_key(session, role=Role(body.role), name=body.name, actor=principal.actor)
        return KeyCreated(**KeyOut.model_validate(row).model_dump(), key=raw)

    return idem.respond(body, action)


@router.get("")
def list_keys(
    session: SessionDep,
    _: AdminAccess,
    include_revoked: Annotated[bool, Query(description="Also list revoked keys.")] = False,
) -> list[KeyOut]:
    return [KeyOut.model_validate(k) for k in auth.list_keys(session, include_revoked=include_revoked)]


@router.delete("/{prefix}", responses=NOT_FOUND)
def revoke_key(
    prefix: Annotated[str, Path(max_length=16, examples=["cim_1a2b3c4d"])],
    session: SessionDep,
    principal: AdminAccess,
) -> KeyOut:
    """Revoke a key (it stays listed with ``revoked_at``); revoking twice is harmless."""
    return KeyOut.model_validate(auth.revoke_key(session, prefix=prefix, actor=principal.actor))

"""/v1/keys: API keys (admin only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse

from app.api.deps import AdminAccess, PageDep, SessionDep
from app.api.idempotency import IdempotencyDep
from app.api.schemas.common import NOT_FOUND, Page, error_response_doc
from app.api.schemas.keys import KEY_EXAMPLE, KeyCreated, KeyIn, KeyOut
from app.db.tables import Role
from app.services import auth

router = APIRouter(prefix="/keys", tags=["keys"])


NOT_REPLAYABLE: dict[int | str, dict[str, Any]] = {
    409: error_response_doc(
        "A retry with the Idempotency-Key of a key already created",
        "idempotency_secret_not_replayable",
        "the first request with this Idempotency-Key succeeded, but its response held a secret that is "
        "not stored; details.response is the rest of it",
        {"status_code": 201, "response": dict(KEY_EXAMPLE)},
    )
}


@router.post("", status_code=201, response_model=KeyCreated, responses=NOT_REPLAYABLE)
def create_key(
    body: KeyIn, session: SessionDep, principal: AdminAccess, idem: IdempotencyDep
) -> JSONResponse:
    """Create a key. The response holds the key itself, this once; only its hash is stored.

    With an `Idempotency-Key`, a retry is 409 `idempotency_secret_not_replayable`: the key was created
    (`details.response` names its prefix) but is not shown again; revoke it and create another."""

    def action() -> KeyCreated:
        row, raw = auth.create_key(session, role=Role(body.role), name=body.name, actor=principal.actor)
        return KeyCreated(**KeyOut.model_validate(row).model_dump(), key=raw)

    return idem.respond(body, action, secret_fields=("key",))


@router.get("")
def list_keys(
    session: SessionDep,
    _: AdminAccess,
    page: PageDep,
    include_revoked: Annotated[bool, Query(description="Also list revoked keys.")] = False,
) -> Page[KeyOut]:
    """Keys, oldest first."""
    items, total = auth.page_keys(
        session, include_revoked=include_revoked, limit=page.limit, offset=page.offset
    )
    return Page(
        items=[KeyOut.model_validate(k) for k in items], total=total, limit=page.limit, offset=page.offset
    )


@router.delete("/{prefix}", responses=NOT_FOUND)
def revoke_key(
    prefix: Annotated[str, Path(max_length=16, examples=["cim_1a2b3c4d"])],
    session: SessionDep,
    principal: AdminAccess,
) -> KeyOut:
    """Revoke a key (it stays listed with ``revoked_at``); revoking twice is harmless."""
    return KeyOut.model_validate(auth.revoke_key(session, prefix=prefix, actor=principal.actor))

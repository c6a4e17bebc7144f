"""``Idempotency-Key`` support for POST endpoints.

Add ``idem: IdempotencyDep`` to a POST endpoint and return through it::

    @router.post("", status_code=201, response_model=ThingOut)
    def create_thing(body: ThingIn, session: SessionDep, principal: EngineerAccess, idem: IdempotencyDep):
        return idem.respond(body, lambda: ThingOut.of(things.create(session, ...)), status_code=201)

Without the header the action just runs. With it, the first response is stored (with the work, in
one transaction) and a retry with the same key and the same payload gets that response again, with
``Idempotent-Replayed: true``, and the action does not run twice. The same key with a different
payload is a 422 ``idempotency_key_reused``. Keys are scoped to the caller's API key and expire after
``CIMCAL_IDEMPOTENCY_TTL_S`` (default 24 h): then the key starts a new request.

A response that holds a secret (``secret_fields``: the plaintext of a new API key) is stored without
it, and a replay is 409 ``idempotency_secret_not_replayable`` whose ``details.response`` is the stored
response without the secret: the client learns that the first request succeeded and what it created
(revoke that key and create another), never the secret a second time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.api.deps import PrincipalDep, SessionDep, SettingsDep
from app.db.session import Session
from app.errors import ConflictError
from app.services import idempotency
from app.services.idempotency import StoredResponse

REPLAYED_HEADER = "Idempotent-Replayed"


class Idempotency:
    def __init__(
        self,
        session: Session,
        owner: str,
        key: str | None,
        method: str,
        path: str,
        ttl_s: float = 24 * 3600,
    ) -> None:
        self.session = session
        self.owner = owner
        self.key = key
        self.method = method
        self.path = path
        self.ttl_s = ttl_s

    def respond(
        self,
        payload: Any,
        action: Callable[[], BaseModel],
        *,
        status_code: int = 201,
        secret_fields: tuple[str, ...] = (),
    ) -> JSONResponse:
        """Run ``action`` once per key. ``payload`` is what makes two requests "the same": the validated
        body model, or for uploads the bytes (or a dict holding their hash). ``secret_fields`` are top-level
        fields of the response that are never stored (their replay is refused)."""
        if self.key is None:
            return JSONResponse(jsonable_encoder(action()), status_code=status_code)
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json")
        claimed = idempotency.claim(
            self.session,
            owner=self.owner,
            key=self.key,
            request_sha256=idempotency.fingerprint(self.method, self.path, payload),
            ttl_s=self.ttl_s,
        )
        if isinstance(claimed, StoredResponse):
            if secret_fields:
                raise ConflictError(
                    "the first request with this Idempotency-Key succeeded, but its response held a secret "
                    "that is not stored; details.response is the rest of it",
                    code="idempotency_secret_not_replayable",
                    details={"status_code": claimed.status_code, "response": claimed.body},
                )
            return JSONResponse(
                claimed.body, status_code=claimed.status_code, headers={REPLAYED_HEADER: "true"}
            )
        body = jsonable_encoder(action())
        stored = {k: v for k, v in body.items() if k not in secret_fields} if secret_fields else body
        idempotency.complete(self.session, claimed, status_code=status_code, body=stored)
        return JSONResponse(body, status_code=status_code)


def get_idempotency(
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Retry-safe POST: a retry with the same key and body returns the first response.",
            examples=["6f1d2c3e-0b7a-4d59-9c1e-2a4b5c6d7e8f"],
        ),
    ] = None,
) -> Idempotency:
    return Idempotency(
        session,
        principal.prefix,
        idempotency_key,
        request.method,
        request.url.path,
        ttl_s=settings.idempotency_ttl_s,
    )


IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency)]

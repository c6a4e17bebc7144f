"""Idempotent POSTs: the first response to a key is stored and replayed to retries.

The record is written in the same transaction as the work, so a request that fails leaves nothing
behind and may be retried with the same key. The record is inserted *before* the work: a second,
concurrent request with the same key waits on the unique (owner, key) index (PostgreSQL) or on the
write lock (SQLite) and then replays the first response instead of doing the work again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.repositories import idempotency
from app.db.tables import IdempotencyRecord
from app.errors import ConflictError, InvalidInputError

PENDING = 0  # status_code of a record whose request is still being processed


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: Any


def fingerprint(method: str, path: str, payload: Any) -> str:
    """SHA-256 of the request: method, path and a canonical form of the validated payload."""
    h = hashlib.sha256(f"{method.upper()} {path}\n".encode())
    if isinstance(payload, bytes | bytearray | memoryview):
        h.update(bytes(payload))
    else:
        h.update(json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode())
    return h.hexdigest()


def claim(
    session: Session, *, owner: str, key: str, request_sha256: str
) -> IdempotencyRecord | StoredResponse:
    """Either the stored response to replay, or a new pending record to :func:`complete` after the work."""
    record = idempotency.get(session, owner, key)
    if record is None:
        try:
            with session.begin_nested():
                return idempotency.add(
                    session,
                    IdempotencyRecord(
                        owner=owner, key=key, request_sha256=request_sha256, status_code=PENDING
                    ),
                )
        except IntegrityError:  # a concurrent request with this key committed first
            record = idempotency.get(session, owner, key)
            if record is None:
                raise
    if record.request_sha256 != request_sha256:
        raise InvalidInputError(
            "this Idempotency-Key was used with a different request; use a new key for a new request",
            code="idempotency_key_reused",
        )
    if record.status_code == PENDING:
        raise ConflictError(
            "a request with this Idempotency-Key is still being processed", code="idempotency_in_progress"
        )
    return StoredResponse(record.status_code, record.response_body)


def complete(session: Session, record: IdempotencyRecord, *, status_code: int, body: Any) -> None:
    record.status_code = status_code
    record.response_body = body
    session.flush()

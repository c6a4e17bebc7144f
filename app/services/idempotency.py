"""Idempotent POSTs: the first response to a key is stored and replayed to retries.

The record is written in the same transaction as the work, so a request that fails leaves nothing
behind and may be retried with the same key. The record is inserted *before* the work: a second,
concurrent request with the same key waits on the unique (owner, key) index (PostgreSQL) or on the
write lock (SQLite) and then replays the first response instead of doing the work again.

Records live ``ttl_s`` seconds (``CIMCAL_IDEMPOTENCY_TTL_S``): an expired record is ignored (its key
starts a new request) and expired records are purged, at most once per :data:`PURGE_INTERVAL_S` per
process, in the transaction of a claim.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.repositories import idempotency
from app.db.tables import IdempotencyRecord
from app.errors import ConflictError, InvalidInputError

PENDING = 0  # status_code of a record whose request is still being processed
PURGE_INTERVAL_S = 600.0

_purge_lock = threading.Lock()
_last_purge = -float("inf")  # time.monotonic() of this process's last purge


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
    session: Session, *, owner: str, key: str, request_sha256: str, ttl_s: float
) -> IdempotencyRecord | StoredResponse:
    """Either the stored response to replay, or a new pending record to :func:`complete` after the work."""
    now = utcnow()
    expired_before = now - timedelta(seconds=ttl_s)
    _purge_now_and_then(session, expired_before)
    record = None
    for _ in range(3):  # an expired record renewed or purged by a concurrent request: look again
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
                continue
        if record.created_at >= expired_before:
            break
        if idempotency.renew_expired(
            session,
            record.id,
            expired_before=expired_before,
            request_sha256=request_sha256,
            now=now,
            pending=PENDING,
        ):
            renewed = idempotency.get(session, owner, key)
            assert renewed is not None
            return renewed
    if record is None:
        raise ConflictError(
            "a request with this Idempotency-Key is still being processed", code="idempotency_in_progress"
        )
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


def _purge_now_and_then(session: Session, expired_before: datetime) -> None:
    global _last_purge
    with _purge_lock:
        if time.monotonic() - _last_purge < PURGE_INTERVAL_S:
            return
        _last_purge = time.monotonic()
    idempotency.purge_expired(session, expired_before=expired_before)


def complete(session: Session, record: IdempotencyRecord, *, status_code: int, body: Any) -> None:
    record.status_code = status_code
    record.response_body = body
    session.flush()

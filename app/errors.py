"""The application's error tree and the one mapping from hardware errors to HTTP statuses.

Every failure leaves the service as ``{"error": {"code": ..., "message": ..., "details": ...}}``;
the handlers that produce that body are registered in :func:`app.main.create_app`.
Services raise these; repositories never do (they return ``None`` or let integrity errors through).
"""

from __future__ import annotations

from typing import Any

from hardware.driver import (
    ContactError,
    DieFault,
    HardwareError,
    HardwareTimeoutError,
    NotConnectedError,
    ProtocolError,
)


class AppError(Exception):
    """Base of the service's errors: an HTTP status, a stable ``code`` and optional ``details``."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class InvalidInputError(AppError):
    """Input that passed schema validation but not the domain's rules."""

    status_code = 422
    code = "validation_error"


class NotFoundError(AppError):
    status_code = 404
    code = "not_found"


class ConflictError(AppError):
    status_code = 409
    code = "conflict"


class AuthenticationError(AppError):
    status_code = 401
    code = "unauthenticated"


class PermissionDeniedError(AppError):
    status_code = 403
    code = "forbidden"


class PayloadTooLargeError(AppError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(AppError):
    status_code = 415
    code = "unsupported_media_type"


class UnavailableError(AppError):
    status_code = 503
    code = "unavailable"


# Most specific first: the first class the error is an instance of decides the status.
HARDWARE_ERROR_STATUS: tuple[tuple[type[HardwareError], int], ...] = (
    (NotConnectedError, 503),
    (HardwareTimeoutError, 504),
    (ProtocolError, 502),
    (DieFault, 409),
    (ContactError, 503),
    (HardwareError, 502),
)


def hardware_error_status(exc: HardwareError) -> int:
    return next(status for cls, status in HARDWARE_ERROR_STATUS if isinstance(exc, cls))


def hardware_error_details(exc: HardwareError) -> dict[str, Any]:
    details: dict[str, Any] = {"op": exc.op}
    if isinstance(exc, HardwareTimeoutError):
        details["timeout_s"] = exc.timeout_s
    if isinstance(exc, ProtocolError):
        details["protocol_code"] = exc.protocol_code
    return details

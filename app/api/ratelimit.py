"""Rate limits (slowapi over the ``limits`` package): 429 ``rate_limited`` with ``Retry-After``.

Two limits, both in the ``limits`` notation (``"100/second;3000/minute"``) and read from the settings
on every request:

* ``rate_limit``: requests per caller over the whole API, the caller being the API key's public prefix
  (its first 12 characters, whether or not the key turns out valid) or, for a request without a key,
  the client's IP address;
* ``auth_failure_limit``: failed authentications (401) per client IP address. Past it every request
  from that address is refused until the window moves on, so guessing keys (each guess under a new
  prefix) costs the guesser, not the stations.

The health probes (:data:`EXEMPT_PATHS`) are exempt; ``rate_limit_enabled=false`` turns both off.
Counts live in ``rate_limit_storage_uri``: ``memory://`` (per process) or ``redis://...`` (shared by
processes), as sliding-window counters (constant memory per caller, unlike a moving window's log).
The address is the connection's peer: behind a reverse proxy, run uvicorn with ``--proxy-headers`` so
it is the client's.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from limits import RateLimitItem, parse_many
from slowapi import Limiter
from slowapi.util import get_remote_address
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.edge import error_response
from app.config import Settings
from app.services.auth import PREFIX_LEN

_AUTH_FAILURES = "auth-failures"
_CALLERS = "cimcal-callers"
EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})


def caller_key(request: Request) -> str:
    """``key:<prefix>`` for a request with an API key (header or bearer token), else ``ip:<address>``."""
    raw = request.headers.get("x-api-key")
    if not raw:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        raw = token.strip() if scheme.lower() == "bearer" else None
    if raw:
        return f"key:{raw[:PREFIX_LEN]}"
    return f"ip:{get_remote_address(request)}"


def build_limiter(app: FastAPI) -> Limiter:
    """The app's limiter: its storage and strategy. :class:`RateLimits` reads the limits themselves from
    ``app.state.settings`` on every request (tests swap the settings)."""
    settings: Settings = app.state.settings
    return Limiter(
        key_func=caller_key,
        storage_uri=settings.rate_limit_storage_uri,
        strategy="sliding-window-counter",
    )


def _retry_after_s(limiter: Limiter, item: RateLimitItem, *identifiers: str) -> int:
    reset_at = limiter.limiter.get_window_stats(item, *identifiers).reset_time
    return max(1, math.ceil(reset_at - time.time()))


def _limited(message: str, retry_after_s: int, details: dict[str, object]) -> JSONResponse:
    return error_response(
        429,
        "rate_limited",
        message,
        {**details, "retry_after_s": retry_after_s},
        headers={"Retry-After": str(retry_after_s)},
    )


@lru_cache(maxsize=64)
def _items(notation: str) -> tuple[RateLimitItem, ...]:
    """``"100/second;3000/minute"`` parsed once per distinct setting (the settings may be swapped)."""
    return tuple(parse_many(notation))


class RateLimits:
    """Pure ASGI middleware: the failed-authentication limit per address, then the per-caller limit.

    It drives slowapi's limiter (its ``limits`` strategy and storage) directly, once per request:
    slowapi's own middleware looks the endpoint up in ``app.routes``, which FastAPI no longer flattens
    (included routers stay nested), so it would find no endpoint and exempt everything, and its
    per-request evaluation (limits re-parsed, the key function inspected) costs more than the route
    it guards. :data:`EXEMPT_PATHS` are exempt.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        settings: Settings = scope["app"].state.settings
        if not settings.rate_limit_enabled:
            await self.app(scope, receive, send)
            return
        limiter: Limiter = scope["app"].state.limiter
        request = Request(scope)
        address = get_remote_address(request)
        failures = _items(settings.auth_failure_limit)
        for item in failures:
            if not limiter.limiter.test(item, _AUTH_FAILURES, address):
                response = _limited(
                    f"too many failed authentications from {address}; retry later",
                    _retry_after_s(limiter, item, _AUTH_FAILURES, address),
                    {"limit": str(item)},
                )
                await response(scope, receive, send)
                return
        caller = caller_key(request)
        for item in _items(settings.rate_limit):
            if not limiter.limiter.hit(item, _CALLERS, caller):
                response = _limited(
                    f"rate limit of {item} exceeded; retry later",
                    _retry_after_s(limiter, item, _CALLERS, caller),
                    {"limit": str(item)},
                )
                await response(scope, receive, send)
                return

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                for item in failures:
                    limiter.limiter.hit(item, _AUTH_FAILURES, address)
            await send(message)

        await self.app(scope, receive, watch)

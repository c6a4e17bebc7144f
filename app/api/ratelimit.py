"""Rate limits (the ``limits`` package): 429 ``rate_limited`` with ``Retry-After``.

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
from limits import aio as limits_aio
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.edge import error_response
from app.config import Settings
from app.services.auth import PREFIX_LEN

_AUTH_FAILURES = "auth-failures"
_CALLERS = "cimcal-callers"
EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "127.0.0.1"


def caller_key(request: Request) -> str:
    """``key:<prefix>`` for a request with an API key (header or bearer token), else ``ip:<address>``."""
    raw = request.headers.get("x-api-key")
    if not raw:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        raw = token.strip() if scheme.lower() == "bearer" else None
    if raw:
        return f"key:{raw[:PREFIX_LEN]}"
    return f"ip:{client_address(request.scope)}"


class Limiter:
    """The counters of every limit, as sliding windows in ``storage_uri``.

    ``memory://`` counts in the event loop (``limits.aio``): the synchronous memory storage starts a
    thread to sweep expired counters every 10 ms under load, and the event loop waits for each
    thread to start. Other storages (``redis://...``) are the synchronous ones, shared by processes.
    """

    def __init__(self, storage_uri: str) -> None:
        self.storage_uri = storage_uri
        self._aio: limits_aio.strategies.SlidingWindowCounterRateLimiter | None = None
        self._sync: SlidingWindowCounterRateLimiter | None = None
        if storage_uri.startswith("memory://"):
            self._aio = limits_aio.strategies.SlidingWindowCounterRateLimiter(
                limits_aio.storage.MemoryStorage()
            )
        else:
            self._sync = SlidingWindowCounterRateLimiter(storage_from_string(storage_uri))

    def reset(self) -> None:
        """Forget every count (of every process, with a shared storage)."""
        if self._aio is not None:  # the async storage's reset is a coroutine: start over instead
            self._aio = limits_aio.strategies.SlidingWindowCounterRateLimiter(
                limits_aio.storage.MemoryStorage()
            )
        else:
            assert self._sync is not None
            self._sync.storage.reset()

    async def hit(self, item: RateLimitItem, *identifiers: str) -> bool:
        if self._aio is not None:
            return await self._aio.hit(item, *identifiers)
        assert self._sync is not None
        return self._sync.hit(item, *identifiers)

    async def test(self, item: RateLimitItem, *identifiers: str) -> bool:
        if self._aio is not None:
            return await self._aio.test(item, *identifiers)
        assert self._sync is not None
        return self._sync.test(item, *identifiers)

    async def retry_after_s(self, item: RateLimitItem, *identifiers: str) -> int:
        if self._aio is not None:
            stats = await self._aio.get_window_stats(item, *identifiers)
        else:
            assert self._sync is not None
            stats = self._sync.get_window_stats(item, *identifiers)
        return max(1, math.ceil(stats.reset_time - time.time()))


def build_limiter(app: FastAPI) -> Limiter:
    """The app's counters. :class:`RateLimits` reads the limits themselves from ``app.state.settings``
    on every request (tests swap the settings)."""
    settings: Settings = app.state.settings
    return Limiter(settings.rate_limit_storage_uri)


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

    It counts once per request with the ``limits`` strategy itself: slowapi's middleware looks the
    endpoint up in ``app.routes``, which FastAPI no longer flattens (included routers stay nested), so
    it would find no endpoint and exempt everything, and its per-request evaluation (limits parsed
    again, the key function inspected) cost more than the image route it guarded.
    :data:`EXEMPT_PATHS` are exempt.
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
        address = client_address(scope)
        failures = _items(settings.auth_failure_limit)
        for item in failures:
            if not await limiter.test(item, _AUTH_FAILURES, address):
                response = _limited(
                    f"too many failed authentications from {address}; retry later",
                    await limiter.retry_after_s(item, _AUTH_FAILURES, address),
                    {"limit": str(item)},
                )
                await response(scope, receive, send)
                return
        caller = caller_key(Request(scope))
        for item in _items(settings.rate_limit):
            if not await limiter.hit(item, _CALLERS, caller):
                response = _limited(
                    f"rate limit of {item} exceeded; retry later",
                    await limiter.retry_after_s(item, _CALLERS, caller),
                    {"limit": str(item)},
                )
                await response(scope, receive, send)
                return

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                for item in failures:
                    await limiter.hit(item, _AUTH_FAILURES, address)
            await send(message)

        await self.app(scope, receive, watch)

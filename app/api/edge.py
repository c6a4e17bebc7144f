"""The HTTP edge: what every request passes before a router sees it, and the one error body.

:class:`EdgeGuard` refuses, for every route,

* control characters (``\\x00``-``\\x1f``, ``\\x7f``) in the path, the query and every string of a JSON
  body (keys included): 422 ``invalid_characters``. PostgreSQL cannot store NUL, and no name, ECID or
  reference of this API has a use for the others;
* JSON bodies that are not UTF-8 (nor UTF-16/32) or nested deeper than the parser goes: 422
  ``validation_error`` like other malformed JSON;
* request bodies over ``settings.max_body_bytes``: 413 ``payload_too_large``, from ``Content-Length``
  before anything is read, else as soon as the stream passes the limit. The upload routes
  (:data:`UPLOAD_PATHS`) read their own bodies under their own, larger limits
  (``max_model_bytes``, ``max_dataset_bytes``) and check their form fields themselves.

:func:`security_headers` are the headers of the dashboard's pages and assets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings

CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
UPLOAD_PATHS = frozenset({"/v1/models", "/v1/datasets"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# The dashboard's shell loads its script, style and plotly.js from /dashboard/static and fetches JSON
# from /v1: nothing else. plotly sets style attributes on the SVG it draws, hence 'unsafe-inline' for
# styles only; scripts are the served files alone (the shell has no inline script).
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def security_headers() -> dict[str, str]:
    """Headers of every dashboard response: the CSP, no MIME sniffing, no framing, no referrer."""
    return {
        "Content-Security-Policy": DASHBOARD_CSP,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }


def error_response(
    status_code: int, code: str, message: str, details: Any = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one error body: ``{"error": {"code", "message", "details"}}``."""
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status_code, headers=headers)


def has_control_chars(value: str) -> bool:
    return CONTROL_CHARS.search(value) is not None


INVALID_CHARACTERS_MESSAGE = (
    "control characters (such as NUL) are not allowed in the path, the query or the body"
)


def invalid_characters_details(loc: list[str | int]) -> list[dict[str, Any]]:
    return [{"loc": loc, "msg": "control character", "type": "invalid_characters"}]


def _invalid(loc: list[str | int]) -> JSONResponse:
    return error_response(
        422, "invalid_characters", INVALID_CHARACTERS_MESSAGE, invalid_characters_details(loc)
    )


def control_char_locations(value: Any, loc: list[str | int]) -> Iterator[list[str | int]]:
    """The location of every string (and object key) in a parsed JSON document with a control character.

    Iterative: a document nested as deep as the parser allows must not exhaust the stack here."""
    stack: list[tuple[Any, list[str | int]]] = [(value, loc)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if has_control_chars(item):
                yield where
        elif isinstance(item, dict):
            for k, v in reversed(item.items()):
                stack.append((v, [*where, k]))
                if has_control_chars(k):
                    stack.append((k, [*where, k]))
        elif isinstance(item, list):
            stack.extend((v, [*where, i]) for i, v in reversed(list(enumerate(item))))


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            media = value.split(b";")[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return False


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class EdgeGuard:
    """Pure ASGI middleware (it buffers small bodies; streaming uploads pass untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self._check_url(scope)
        if refused is not None:
            await refused(scope, receive, send)
            return
        if scope["method"] not in _BODY_METHODS or scope["path"] in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        settings: Settings = scope["app"].state.settings
        limit = settings.max_body_bytes
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await self._too_large(limit, declared)(scope, receive, send)
            return
        chunks: list[bytes] = []
        total = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                await self._too_large(limit, None)(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body and _is_json(scope):
            try:
                document = json.loads(body)
            except (UnicodeDecodeError, RecursionError) as e:  # the router: 400 or 500
                why = "not UTF-8" if isinstance(e, UnicodeDecodeError) else "nested too deeply"
                await error_response(
                    422,
                    "validation_error",
                    "request validation failed",
                    [{"loc": ["body"], "msg": f"the JSON body is {why}", "type": "json_invalid"}],
                )(scope, receive, send)
                return
            except ValueError:
                document = None  # the router answers malformed JSON with its own 422
            bad = next(control_char_locations(document, ["body"]), None)
            if bad is not None:
                await _invalid(bad)(scope, receive, send)
                return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _check_url(scope: Scope) -> JSONResponse | None:
        if has_control_chars(scope["path"]):
            return _invalid(["path"])
        query = scope.get("query_string", b"").decode("latin-1")
        for name, value in parse_qsl(query, keep_blank_values=True, errors="surrogateescape"):
            if has_control_chars(name) or has_control_chars(value):
                return _invalid(["query", name])
        return None

    @staticmethod
    def _too_large(limit: int, declared: int | None) -> JSONResponse:
        size = "over the limit" if declared is None else f"of {declared} bytes"
        return error_response(
            413, "payload_too_large", f"request body {size}; the limit is {limit} bytes", {"limit": limit}
        )

"""The error body, pagination and the helpers that attach OpenAPI examples."""

from __future__ import annotations

import typing
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")

INT32_MAX = 2**31 - 1
"""The largest id (the tables' integer keys are 32-bit on PostgreSQL) and the largest offset."""


def with_example(example: dict[str, Any], **config: Any) -> ConfigDict:
    """``model_config`` carrying one OpenAPI example for the schema."""
    return ConfigDict(json_schema_extra={"examples": [example]}, **config)  # type: ignore[typeddict-item]


def example_of(model: type[BaseModel]) -> Any:
    extra = model.model_config.get("json_schema_extra")
    return extra["examples"][0] if isinstance(extra, dict) else None  # type: ignore[index]


class ErrorInfo(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. `not_found`, `validation_error`.")
    message: str = Field(description="What went wrong, for a person.")
    details: Any = Field(None, description="Optional structured context (e.g. the invalid fields).")


class ErrorBody(BaseModel):
    """Every failure has this body."""

    model_config = with_example(
        {"error": {"code": "not_found", "message": "no lot 'LOT0042'", "details": None}}
    )

    error: ErrorInfo


def _page_example(schema: dict[str, Any], cls: type[Any]) -> None:
    item = typing.get_args(cls.model_fields["items"].annotation)
    item_example = example_of(item[0]) if item and isinstance(item[0], type) else None
    if item_example is not None:
        schema["examples"] = [{"items": [item_example], "total": 1, "limit": 50, "offset": 0}]


class Page(BaseModel, Generic[T]):
    """One page of a listing; ``total`` counts every match, not just this page."""

    model_config = ConfigDict(json_schema_extra=_page_example)

    items: list[T]
    total: int
    limit: int
    offset: int


def error_response_doc(description: str, code: str, message: str, details: Any = None) -> dict[str, Any]:
    example = {"error": {"code": code, "message": message, "details": details}}
    return {
        "model": ErrorBody,
        "description": description,
        "content": {"application/json": {"example": example}},
    }


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: error_response_doc("Missing, invalid or revoked API key", "unauthenticated", "invalid API key"),
    403: error_response_doc(
        "The key's role may not do this",
        "forbidden",
        "role 'viewer' may not do this (needs one of: admin, engineer)",
        {"role": "viewer", "allowed": ["admin", "engineer"]},
    ),
    422: error_response_doc(
        "The request is malformed",
        "validation_error",
        "request validation failed",
        [
            {
                "loc": ["query", "limit"],
                "msg": "Input should be less than or equal to 500",
                "type": "less_than_equal",
            }
        ],
    ),
    429: error_response_doc(
        "Too many requests from this API key (or address); retry after `Retry-After` seconds",
        "rate_limited",
        "rate limit of 1000 per 1 second exceeded; retry later",
        {"limit": "1000 per 1 second", "retry_after_s": 1},
    ),
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: error_response_doc("No such resource", "not_found", "no lot 'LOT0042'")
}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: error_response_doc(
        "Conflicts with what is stored", "lot_exists", "lot 'LOT0001' is already registered"
    )
}

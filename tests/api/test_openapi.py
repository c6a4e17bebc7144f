"""/docs is usable: every operation documents an example request (when it takes a body) and response."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from app.main import create_app


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _has_example(spec: dict[str, Any], media: dict[str, Any]) -> bool:
    if "example" in media or "examples" in media:
        return True
    schema = _resolve(spec, media.get("schema", {}))
    if "examples" in schema:
        return True
    items = schema.get("items")  # a plain list of documented items
    return isinstance(items, dict) and "examples" in _resolve(spec, items)


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), p, op) for p, ops in spec["paths"].items() for m, op in ops.items()]


def test_every_operation_has_examples() -> None:
    spec = create_app().openapi()
    missing = []
    for method, path, op in _operations(spec):
        for media_type, media in op.get("requestBody", {}).get("content", {}).items():
            if not _has_example(spec, media):
                missing.append(f"{method} {path} request {media_type}")
        for status, response in op["responses"].items():
            for media in response.get("content", {}).values():
                if not _has_example(spec, media):
                    missing.append(f"{method} {path} response {status}")
    assert missing == []


def test_errors_are_documented_with_the_one_error_body() -> None:
    spec = create_app().openapi()
    for method, path, op in _operations(spec):
        if path.startswith("/v1/"):
            assert {"401", "403", "422"} <= set(op["responses"]), f"{method} {path}"
            schema = op["responses"]["422"]["content"]["application/json"]["schema"]
            assert schema["$ref"].endswith("/ErrorBody"), f"{method} {path}"


def test_docs_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "cimcal"

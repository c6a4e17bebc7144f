"""Property-based run of the whole OpenAPI document (schemathesis), on SQLite and PostgreSQL.

Every operation gets its documented examples, the coverage phase's boundary values (too long, too
large, wrong types, missing fields, NUL bytes) and a few random cases, valid and invalid. No response
may be a 5xx and every status must be one the operation documents.

The requests go through the tests' running app (schemathesis's own ASGI client would start the app's
lifespan a second time). The database holds a lot whose ECIDs are the documented examples, one
characterized die and a small model named like the examples, so they reach past the 404s; callers are an
admin, and a station for the station's operations (its budget cap keeps characterization short). Jobs
are created but not run.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import status_code_conformance
from sqlalchemy import Engine

from app.db.session import make_session_factory, session_scope
from app.db.tables import Role
from app.jobs.runner import JobRunner
from app.main import create_app
from app.services import auth
from tests.api.models_util import tiny_kws_model
from tests.conftest import _empty_tables, _test_settings

MAX_EXAMPLES = 4
STATION_PATHS = ("/v1/dies/{ecid}/characterize", "/v1/dies/{ecid}/functional-test", "/v1/chips/")
BASE_URL = "http://testserver"
IDEMPOTENCY_KEY_EXAMPLE = "6f1d2c3e-0b7a-4d59-9c1e-2a4b5c6d7e8f"
_REQUEST_ARGS = set(inspect.signature(requests.Request).parameters)

CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 13,
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "no-shrink": True},
        "phases": {"stateful": {"enabled": False}},
    }
)
schema = schemathesis.openapi.from_dict(create_app().openapi(), config=CONFIG)


class Parked(JobRunner):
    """Takes jobs and runs nothing: the run must not start tester work in the background."""

    def _send(self, job_id: int, die_ids: list[int]) -> None:
        pass

    def _open_die_ids(self, job_id: int) -> list[int]:
        return []

    def _open_job_ids(self) -> list[int]:
        return []


@pytest.fixture(scope="module")
def seeded(
    _running_app: TestClient, migrated_engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[Role, dict[str, str]]]:
    """Keys per role and the example data, once per backend for the whole module."""
    client = _running_app
    app = client.app
    assert isinstance(app, FastAPI)
    url = migrated_engine.url.render_as_string(hide_password=False)
    original = app.state.settings, app.state.job_runner
    app.state.settings = _test_settings(url, Path(tmp_path_factory.mktemp("schemathesis"))).model_copy(
        update={"max_station_budget": 2048, "characterize_budget": 2048, "functional_test_clips": 12}
    )
    app.state.job_runner = Parked()
    with session_scope(make_session_factory(migrated_engine)) as s:
        keys = {
            role: {"X-API-Key": auth.create_key(s, role=role, name=f"st-{role.value}", actor="tests")[1]}
            for role in Role
        }
    try:
        lot = {
            "lot_id": "LOT0001",
            "product": "KWS-BCIM-1",
            "wafers": [{"number": 1, "sites": [[0, 0], [1, 0], [0, 1]]}],
        }
        r = client.post("/v1/lots", json=lot, headers=keys[Role.engineer])
        assert r.status_code == 201, r.text
        for version in ("1", "1.0"):  # the examples name both
            model = tiny_kws_model(name="kws-bnn", version=version)
            r = client.post(
                "/v1/models",
                files={"file": ("m.npz", model, "application/octet-stream")},
                data={"name": "kws-bnn", "version": version},
                headers=keys[Role.engineer],
            )
            assert r.status_code == 201, r.text
        r = client.post(
            "/v1/dies/LOT0001-W01-X+001Y+000/characterize", json={"budget": 2048}, headers=keys[Role.station]
        )
        assert r.status_code == 201, r.text
        yield keys
    finally:
        app.state.settings, app.state.job_runner = original
        _empty_tables(migrated_engine)


def _send(client: TestClient, case: Any, headers: dict[str, str]) -> Any:
    """The case's request, encoded as schemathesis encodes it, sent through the running app."""
    kwargs = case.as_transport_kwargs(base_url=BASE_URL, headers=headers)
    if kwargs["headers"].get("Idempotency-Key") == IDEMPOTENCY_KEY_EXAMPLE:
        # Every case would replay the first with the documented key: 422 idempotency_key_reused.
        kwargs["headers"]["Idempotency-Key"] = uuid.uuid4().hex
    prepared = requests.Request(**{k: v for k, v in kwargs.items() if k in _REQUEST_ARGS}).prepare()
    body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
    return client.request(
        str(prepared.method),
        str(prepared.url),
        content=body,
        headers=[(k.encode("latin-1"), _header_bytes(v)) for k, v in prepared.headers.items()],
    )


def _header_bytes(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors_and_only_documented_statuses(
    case: Any, _running_app: TestClient, seeded: dict[Role, dict[str, str]]
) -> None:
    station = case.operation.path.startswith(STATION_PATHS)
    headers = seeded[Role.station if station else Role.admin]
    response = _send(_running_app, case, headers)
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance], headers=headers)

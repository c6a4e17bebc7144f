"""The image GET's in-memory answers (app/services/serving.py) never outlive what they describe.

The time-to-live is set to an hour in most tests, so whatever drops a cached answer here is the change
counter, not the clock.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.db.session import session_scope
from app.services import calibration
from hardware.chip import decode_image
from tests.api.helpers import assert_error, register
from tests.api.models_util import tiny_kws_model

Headers = Callable[[str], dict[str, str]]
ECID = "LOT0001-W01-X+000Y+000"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def hour_ttl(app: FastAPI) -> None:
    app.state.settings = app.state.settings.model_copy(update={"serving_cache_ttl_s": 3600.0})


@pytest.fixture
def image_url(client: TestClient, as_role: Headers, hour_ttl: None) -> tuple[str, dict[str, str]]:
    """A characterized die and a model: the image's URL and query."""
    register(client, as_role("engineer"))
    r = client.post(
        "/v1/models",
        files={"file": ("tiny.npz", tiny_kws_model(), "application/octet-stream")},
        data={"name": "tiny", "version": "1"},
        headers=as_role("engineer"),
    )
    assert r.status_code == 201, r.text
    r = client.post(f"/v1/dies/{ECID}/characterize", json={"budget": 8192}, headers=as_role("station"))
    assert r.status_code == 201, r.text
    return f"/v1/chips/{ECID}/image", {"model": "tiny@1"}


def test_a_new_signature_from_another_unit_of_work_serves_the_new_image_at_once(
    app: FastAPI,
    client: TestClient,
    as_role: Headers,
    image_url: tuple[str, dict[str, str]],
    session_factory: sessionmaker[Session],
) -> None:
    url, params = image_url
    h = as_role("station")
    first = client.get(url, params=params, headers=h)
    assert client.get(url, params=params, headers=h).headers["etag"] == first.headers["etag"]
    # Re-characterized outside the request path, as a batch job does (its own session and commit).
    with session_scope(session_factory) as s:
        new = calibration.characterize_die(s, app.state.drivers, ECID, force=True, budget=8192)
    second = client.get(url, params=params, headers=h)
    assert second.status_code == 200 and second.headers["etag"] != first.headers["etag"]
    assert second.headers["etag"] == f'"{hashlib.sha256(second.content).hexdigest()}"'
    assert decode_image(second.content).header.signature_hash == new.signature_sha256
    # The old image's tag no longer matches: If-None-Match with it gets the new bytes.
    r = client.get(url, params=params, headers={**h, "If-None-Match": first.headers["etag"]})
    assert r.status_code == 200 and r.content == second.content


def test_bytes_are_served_from_memory_once_read(
    app: FastAPI, client: TestClient, as_role: Headers, image_url: tuple[str, dict[str, str]]
) -> None:
    url, params = image_url
    h = as_role("station")
    first = client.get(url, params=params, headers=h)
    sha = first.headers["etag"].strip('"')
    app.state.image_store.path(sha).unlink()  # not read again: a repeated GET does not touch the disk
    again = client.get(url, params=params, headers=h)
    assert again.status_code == 200 and again.content == first.content
    head = client.head(url, params=params, headers=h)
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == first.headers["etag"]
    assert int(head.headers["content-length"]) == len(first.content)
    not_modified = client.get(
        url, params=params, headers={**h, "If-None-Match": f"W/{first.headers['etag']}"}
    )
    assert not_modified.status_code == 304 and not_modified.content == b""


def test_a_key_revoked_by_another_process_is_refused_at_once(
    app: FastAPI, client: TestClient, as_role: Headers, hour_ttl: None, engine: Engine
) -> None:
    key = as_role("station")["X-API-Key"]
    assert client.get("/v1/lots", headers={"X-API-Key": key}).status_code == 200  # now cached
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CIMCAL_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "CIMCAL_AUTO_MIGRATE": "0",
        # The running app's store: the processes of one deployment share it and its change counter.
        "CIMCAL_IMAGE_STORE_DIR": str(app.state.image_store.root),
    }
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "revoke", key[:12]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert_error(client.get("/v1/lots", headers={"X-API-Key": key}), 401, "api_key_revoked")


def test_a_change_the_counter_cannot_see_counts_after_the_time_to_live(
    app: FastAPI, client: TestClient, as_role: Headers, session_factory: sessionmaker[Session]
) -> None:
    app.state.settings = app.state.settings.model_copy(update={"serving_cache_ttl_s": 1.0})
    key = as_role("station")["X-API-Key"]
    assert client.get("/v1/lots", headers={"X-API-Key": key}).status_code == 200
    # Revoked behind the service's back (no service call, no counter): the documented bound is the TTL.
    with session_scope(session_factory) as s:
        s.execute(
            text("UPDATE api_key SET revoked_at = CURRENT_TIMESTAMP WHERE prefix = :p"), {"p": key[:12]}
        )
    time.sleep(1.1)
    assert_error(client.get("/v1/lots", headers={"X-API-Key": key}), 401, "api_key_revoked")


def test_no_caching_with_a_zero_time_to_live(
    app: FastAPI, client: TestClient, as_role: Headers, session_factory: sessionmaker[Session]
) -> None:
    app.state.settings = app.state.settings.model_copy(update={"serving_cache_ttl_s": 0.0})
    key = as_role("station")["X-API-Key"]
    assert client.get("/v1/lots", headers={"X-API-Key": key}).status_code == 200
    with session_scope(session_factory) as s:
        s.execute(
            text("UPDATE api_key SET revoked_at = CURRENT_TIMESTAMP WHERE prefix = :p"), {"p": key[:12]}
        )
    assert_error(client.get("/v1/lots", headers={"X-API-Key": key}), 401, "api_key_revoked")

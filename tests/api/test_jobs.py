"""/v1/lots/{lot}/calibrate and /v1/jobs over HTTP, with the in-process runner on light steps."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.tables import Role
from app.jobs.runner import JobRunner, LocalRunner
from app.services.jobs import ExecutionContext
from tests.api.helpers import assert_error
from tests.jobs.conftest import LOT, add_models, register_lot
from tests.jobs.fake_steps import build

Headers = Callable[[Role | str], dict[str, str]]


@pytest.fixture
def runner(app: FastAPI, session_factory: sessionmaker[Session], settings: Settings) -> Iterator[LocalRunner]:
    """The app's runner replaced by a local one on the light steps (restored afterwards)."""
    original = app.state.job_runner
    ctx = ExecutionContext(session_factory, build(session_factory, settings), sleep=lambda _: None)
    local = LocalRunner(ctx, workers=2, chunk_dies=4, resume_on_start=False)
    local.start()
    app.state.job_runner = local
    yield local
    local.stop()
    app.state.job_runner = original


@pytest.fixture
def lot(session_factory: sessionmaker[Session]) -> list[str]:
    ecids = register_lot(session_factory)
    add_models(session_factory)
    return ecids


class Parked(JobRunner):
    """Takes jobs and runs nothing."""

    def _send(self, job_id: int, die_ids: list[int]) -> None:
        pass

    def _open_die_ids(self, job_id: int) -> list[int]:
        return []

    def _open_job_ids(self) -> list[int]:
        return []


def calibrate(
    client: TestClient, headers: dict[str, str], lot_id: str = LOT, **body: object
) -> dict[str, object]:
    body.setdefault("model", "kws@1")
    r = client.post(f"/v1/lots/{lot_id}/calibrate", json=body, headers=headers)
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


def test_calibrate_runs_the_lot_and_reports_progress(
    client: TestClient, as_role: Headers, runner: LocalRunner, lot: list[str]
) -> None:
    job = calibrate(client, as_role("engineer"))
    assert job["state"] == "queued" and job["lot_id"] == LOT
    assert job["params"]["steps"] == ["characterize", "compensate", "functional-test"]  # type: ignore[index]
    assert runner.wait_idle(timeout_s=60)

    r = client.get(f"/v1/jobs/{job['id']}", headers=as_role("viewer"))
    assert r.status_code == 200, r.text
    p = r.json()
    n = len(lot)
    assert p["state"] == "succeeded" and p["total_dies"] == n and p["open_dies"] == 0 and p["eta_s"] == 0
    assert [(s["step"], s["total"], s["done"], s["succeeded"], s["failed"]) for s in p["steps"]] == [
        (step, n, n, n, 0) for step in ("characterize", "compensate", "functional-test")
    ]
    assert p["dies_per_s"] > 0 and p["started_at"] and p["finished_at"] and p["errors"] == []
    assert p["counters"]["dies"] == p["counters"]["dies_succeeded"] == n and p["counters"]["dies_failed"] == 0
    assert p["counters"]["attempts"] >= 3 * n


def test_steps_run_in_order_whatever_order_they_are_given_in_and_dies_can_be_picked(
    client: TestClient, as_role: Headers, runner: LocalRunner, lot: list[str]
) -> None:
    job = calibrate(
        client, as_role("engineer"), steps=["compensate", "characterize"], dies={"kind": "wafer", "wafer": 1}
    )
    assert job["params"]["steps"] == ["characterize", "compensate"]  # type: ignore[index]
    assert runner.wait_idle(timeout_s=60)
    p = client.get(f"/v1/jobs/{job['id']}", headers=as_role("viewer")).json()
    assert p["total_dies"] == len(lot) // 2

    picked = calibrate(
        client, as_role("admin"), steps=["compensate"], dies={"kind": "ecids", "ecids": lot[:2]}
    )
    assert runner.wait_idle(timeout_s=60)
    p = client.get(f"/v1/jobs/{picked['id']}", headers=as_role("viewer")).json()
    assert (p["state"], p["total_dies"], p["steps"][0]["succeeded"]) == ("succeeded", 2, 2)


def test_listing_filters_by_state_and_lot_and_pages(
    client: TestClient,
    as_role: Headers,
    runner: LocalRunner,
    lot: list[str],
    session_factory: sessionmaker[Session],
) -> None:
    register_lot(session_factory, "JOBLOT2", wafers=1)
    ids = [
        calibrate(client, as_role("engineer"))["id"],
        calibrate(client, as_role("engineer"), "JOBLOT2")["id"],
    ]
    assert runner.wait_idle(timeout_s=60)
    viewer = as_role("viewer")
    r = client.get("/v1/jobs", headers=viewer).json()
    assert r["total"] == 2 and [j["id"] for j in r["items"]] == ids[::-1]  # newest first
    assert [j["id"] for j in client.get("/v1/jobs?lot_id=JOBLOT2", headers=viewer).json()["items"]] == ids[1:]
    assert client.get("/v1/jobs?state=succeeded&limit=1", headers=viewer).json()["total"] == 2
    page = client.get("/v1/jobs?limit=1&offset=1", headers=viewer).json()
    assert (page["total"], [j["id"] for j in page["items"]]) == (2, ids[:1])
    assert client.get("/v1/jobs?state=running", headers=viewer).json()["items"] == []
    assert_error(client.get("/v1/jobs?state=paused", headers=viewer), 422, "validation_error")


def test_cancel_a_queued_job_then_again(
    client: TestClient, as_role: Headers, app: FastAPI, lot: list[str]
) -> None:
    original = app.state.job_runner
    app.state.job_runner = Parked()  # the job stays queued: nothing runs it
    try:
        job = calibrate(client, as_role("engineer"))
    finally:
        app.state.job_runner = original
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=as_role("engineer"))
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "cancelled" and r.json()["finished_at"]
    p = client.get(f"/v1/jobs/{job['id']}", headers=as_role("viewer")).json()
    assert all(s["cancelled"] == s["total"] for s in p["steps"])
    assert_error(
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=as_role("engineer")), 409, "job_finished"
    )
    assert_error(client.post("/v1/jobs/999999/cancel", headers=as_role("engineer")), 404, "not_found")


def test_idempotency_key_starts_one_job(
    client: TestClient, as_role: Headers, runner: LocalRunner, lot: list[str]
) -> None:
    headers = {**as_role("engineer"), "Idempotency-Key": "calibrate-joblot1-1"}
    body = {"model": "kws@1", "steps": ["characterize"]}
    first = client.post(f"/v1/lots/{LOT}/calibrate", json=body, headers=headers)
    again = client.post(f"/v1/lots/{LOT}/calibrate", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.headers.get("Idempotent-Replayed") == "true" and again.json()["id"] == first.json()["id"]
    assert runner.wait_idle(timeout_s=60)
    assert client.get("/v1/jobs", headers=as_role("viewer")).json()["total"] == 1
    other = client.post(f"/v1/lots/{LOT}/calibrate", json={**body, "force": True}, headers=headers)
    assert_error(other, 422, "idempotency_key_reused")


def test_roles_and_errors(client: TestClient, as_role: Headers, runner: LocalRunner, lot: list[str]) -> None:
    url = f"/v1/lots/{LOT}/calibrate"
    for role in ("viewer", "station"):
        assert_error(client.post(url, json={"model": "kws@1"}, headers=as_role(role)), 403, "forbidden")
    assert_error(client.post(url, json={"model": "kws@1"}), 401, "unauthenticated")
    assert_error(client.get("/v1/jobs"), 401, "unauthenticated")
    eng = as_role("engineer")
    assert_error(
        client.post("/v1/lots/NOLOT/calibrate", json={"model": "kws@1"}, headers=eng), 404, "not_found"
    )
    assert_error(client.post(url, json={"model": "kws@7"}, headers=eng), 404, "not_found")
    assert_error(client.post(url, json={"steps": ["compensate"]}, headers=eng), 422, "validation_error")
    assert_error(client.post(url, json={"model": "kws"}, headers=eng), 422, "validation_error")
    assert_error(
        client.post(url, json={"model": "kws@1", "steps": ["bake"]}, headers=eng), 422, "validation_error"
    )
    assert_error(client.post(url, json={"model": "kws@1", "steps": []}, headers=eng), 422, "validation_error")
    bad_wafer = {"model": "kws@1", "dies": {"kind": "wafer", "wafer": 9}}
    assert_error(client.post(url, json=bad_wafer, headers=eng), 404, "not_found")
    stranger = {"model": "kws@1", "dies": {"kind": "ecids", "ecids": ["ELSE-W01-X+000Y+000"]}}
    assert_error(client.post(url, json=stranger, headers=eng), 404, "not_found")
    sample = {"model": "kws@1", "functional_test_sample": 0}
    assert_error(client.post(url, json=sample, headers=eng), 422, "validation_error")
    assert_error(client.get("/v1/jobs/424242", headers=as_role("viewer")), 404, "not_found")

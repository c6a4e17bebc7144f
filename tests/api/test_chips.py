"""Characterize, weight image and functional test over HTTP, on both databases."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.calibration.functional import grade
from app.db.session import session_scope
from app.db.tables import Die, Image, Signature, TestResult
from hardware.chip import decode_image
from hardware.sim.driver import FleetConfig, SimulatedDriver, SimulatedFleet
from hardware.sim.oracle import oracle_fleet_config
from hardware.sim.variation import FaultConfig
from tests.api.helpers import assert_error, register
from tests.api.models_util import tiny_kws_model

Headers = Callable[[str], dict[str, str]]
ECID = "LOT0001-W01-X+000Y+000"
BUDGET = {"budget": 8192}


@pytest.fixture
def lot(client: TestClient, as_role: Headers) -> dict[str, object]:
    return register(client, as_role("engineer"))


@pytest.fixture
def model(client: TestClient, as_role: Headers) -> str:
    r = client.post(
        "/v1/models",
        files={"file": ("tiny.npz", tiny_kws_model(), "application/octet-stream")},
        data={"name": "tiny", "version": "1"},
        headers=as_role("engineer"),
    )
    assert r.status_code == 201, r.text
    return "tiny@1"


def _characterize(
    client: TestClient, as_role: Headers, ecid: str = ECID, **body: object
) -> dict[str, object]:
    r = client.post(f"/v1/dies/{ecid}/characterize", json={**BUDGET, **body}, headers=as_role("station"))
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _count(factory: sessionmaker[Session], stmt: object) -> int:
    with session_scope(factory) as s:
        return int(s.scalar(stmt) or 0)  # type: ignore[call-overload]


def test_characterize_stores_a_current_signature(
    client: TestClient, as_role: Headers, lot: object, session_factory: sessionmaker[Session]
) -> None:
    out = _characterize(client, as_role)
    assert out["ecid"] == ECID and out["version"] == 1 and out["created"] is True
    assert out["read_vectors"] > 0 and out["writes"] > 0 and out["tester_s"] > 0
    assert len(str(out["signature_sha256"])) == 64
    prov = out["provenance"]
    assert isinstance(prov, dict) and prov["driver"] == "simulated" and prov["site"] in (0, 1)
    assert out["retries"] == 0 and prov["serial"] == "seed-2022"
    die = client.get(f"/v1/dies/{ECID}", headers=as_role("viewer")).json()
    assert die["current_signature"]["sha256"] == out["signature_sha256"]
    assert die["current_signature"]["provenance"] == prov and die["current_signature"]["retries"] == 0
    with session_scope(session_factory) as s:
        sig = s.scalars(select(Signature)).one()
        assert hashlib.sha256(sig.blob).hexdigest() == out["signature_sha256"]
        assert sig.is_current and len(sig.blob) == out["signature_bytes"]


def test_characterize_again_keeps_history_with_one_current(
    client: TestClient, as_role: Headers, lot: object, session_factory: sessionmaker[Session]
) -> None:
    first = _characterize(client, as_role)
    second = _characterize(client, as_role)
    reused = _characterize(client, as_role, force=False)
    assert second["version"] == 2 and reused["version"] == 2 and reused["created"] is False
    assert reused["signature_sha256"] == second["signature_sha256"] != first["signature_sha256"]
    assert _count(session_factory, select(func.count()).select_from(Signature)) == 2
    assert (
        _count(session_factory, select(func.count()).select_from(Signature).where(Signature.is_current)) == 1
    )


def test_characterize_retry_with_idempotency_key_stores_nothing_twice(
    client: TestClient, as_role: Headers, lot: object, session_factory: sessionmaker[Session]
) -> None:
    headers = {**as_role("station"), "Idempotency-Key": "char-1"}
    r1 = client.post(f"/v1/dies/{ECID}/characterize", json=BUDGET, headers=headers)
    r2 = client.post(f"/v1/dies/{ECID}/characterize", json=BUDGET, headers=headers)
    assert r1.status_code == r2.status_code == 201
    assert r1.json() == r2.json() and r2.headers["Idempotent-Replayed"] == "true"
    assert _count(session_factory, select(func.count()).select_from(Signature)) == 1


@pytest.mark.parametrize(("role", "status"), [(None, 401), ("viewer", 403), ("engineer", 403)])
def test_characterize_needs_the_station_role(
    client: TestClient, as_role: Headers, lot: object, role: str | None, status: int
) -> None:
    r = client.post(f"/v1/dies/{ECID}/characterize", json=BUDGET, headers=as_role(role) if role else {})
    assert_error(r, status, "unauthenticated" if status == 401 else "forbidden")


def test_characterize_errors(client: TestClient, as_role: Headers, lot: object) -> None:
    h = as_role("station")
    assert_error(
        client.post("/v1/dies/LOT0001-W01-X+009Y+009/characterize", json=BUDGET, headers=h), 404, "not_found"
    )
    assert_error(
        client.post("/v1/dies/not-an-ecid/characterize", json=BUDGET, headers=h), 422, "invalid_ecid"
    )
    assert_error(
        client.post(f"/v1/dies/{ECID}/characterize", json={"budget": 5}, headers=h), 422, "validation_error"
    )


@pytest.fixture
def faulty(app: FastAPI) -> Iterator[Callable[..., None]]:
    """Swap the fleet of every test site for one with the given fault knobs, for one test."""
    drivers = [d for d in app.state.drivers.drivers if isinstance(d, SimulatedDriver)]
    saved = [oracle_fleet_config(d) for d in drivers]

    def set_faults(**knobs: float) -> None:
        for d, config in zip(drivers, saved, strict=True):
            d.swap_fleet(SimulatedFleet(FleetConfig(seed=config.seed, faults=FaultConfig(**knobs))))

    yield set_faults
    for d, config in zip(drivers, saved, strict=True):
        d.swap_fleet(SimulatedFleet(config))


@pytest.mark.parametrize(
    ("knobs", "status", "code"),
    [
        ({"p_timeout": 1.0}, 504, "hardware_timeout"),
        ({"p_contact_loss": 1.0}, 503, "contact_lost"),
        ({"p_gross_defect": 1.0}, 409, "die_fault"),
    ],
)
def test_hardware_faults_map_to_statuses_and_store_nothing(
    client: TestClient,
    as_role: Headers,
    lot: object,
    faulty: Callable[..., None],
    session_factory: sessionmaker[Session],
    knobs: dict[str, float],
    status: int,
    code: str,
) -> None:
    faulty(**knobs)
    r = client.post(f"/v1/dies/{ECID}/characterize", json=BUDGET, headers=as_role("station"))
    assert_error(r, status, code)
    assert _count(session_factory, select(func.count()).select_from(Signature)) == 0


def test_image_is_computed_once_and_served_by_hash(
    client: TestClient, as_role: Headers, lot: object, model: str, session_factory: sessionmaker[Session]
) -> None:
    h = as_role("station")
    assert_error(
        client.get(f"/v1/chips/{ECID}/image", params={"model": model}, headers=h), 409, "not_characterized"
    )
    sig = _characterize(client, as_role)
    r1 = client.get(f"/v1/chips/{ECID}/image", params={"model": model}, headers=h)
    assert r1.status_code == 200 and r1.headers["content-type"] == "application/octet-stream"
    sha = hashlib.sha256(r1.content).hexdigest()
    assert r1.headers["etag"] == f'"{sha}"'
    r2 = client.get(f"/v1/chips/{ECID}/image", params={"model": model}, headers=h)
    assert r2.content == r1.content
    r3 = client.get(
        f"/v1/chips/{ECID}/image", params={"model": model}, headers={**h, "If-None-Match": r1.headers["etag"]}
    )
    assert r3.status_code == 304 and r3.content == b""
    image = decode_image(r1.content)
    assert image.header.ecid == ECID and image.header.signature_hash == sig["signature_sha256"]
    meta = client.get(f"/v1/chips/{ECID}/image/meta", params={"model": model}, headers=h).json()
    assert meta["sha256"] == sha and meta["signature_sha256"] == sig["signature_sha256"]
    assert (
        meta["algorithm_version"] == image.header.algorithm_version and 0 <= meta["predicted_agreement"] <= 1
    )
    assert _count(session_factory, select(func.count()).select_from(Image)) == 1
    # A new signature makes a new image; the old one stays in the store.
    _characterize(client, as_role)
    r4 = client.get(f"/v1/chips/{ECID}/image", params={"model": model}, headers=h)
    assert r4.headers["etag"] != r1.headers["etag"]
    assert _count(session_factory, select(func.count()).select_from(Image)) == 2


def test_image_conditional_requests_and_head(
    client: TestClient, as_role: Headers, lot: object, model: str
) -> None:
    h = as_role("station")
    _characterize(client, as_role)
    url, params = f"/v1/chips/{ECID}/image", {"model": model}
    full = client.get(url, params=params, headers=h)
    etag = full.headers["etag"]
    opaque = etag.strip('"')

    def status(if_none_match: str) -> int:
        r = client.get(url, params=params, headers={**h, "If-None-Match": if_none_match})
        if r.status_code == 304:
            assert r.content == b"" and r.headers["etag"] == etag
        return r.status_code

    # RFC 9110 13.1.2: weak comparison, any tag of a list, and "*" for any current representation.
    assert status(etag) == status(f"W/{etag}") == status("*") == 304
    assert status(f'"other", W/"x,y", {etag}') == status(f'W/"other",W/"{opaque}"') == 304
    assert status('"other"') == status(opaque) == status(f'"{opaque[:-1]}"') == status("W/") == 200
    # HEAD: the same headers as GET, no body.
    head = client.head(url, params=params, headers=h)
    assert head.status_code == 200 and head.content == b""
    for name in ("etag", "content-type", "content-disposition", "cache-control"):
        assert head.headers[name] == full.headers[name], name
    assert int(head.headers["content-length"]) == len(full.content)
    r = client.head(url, params=params, headers={**h, "If-None-Match": "*"})
    assert r.status_code == 304 and r.headers["etag"] == etag
    assert client.head(url, params={"model": "nope@1"}, headers=h).status_code == 404


def test_image_errors(client: TestClient, as_role: Headers, lot: object, model: str) -> None:
    h = as_role("station")
    _characterize(client, as_role)
    assert_error(
        client.get(f"/v1/chips/{ECID}/image", params={"model": "nope@1"}, headers=h), 404, "model_not_found"
    )
    assert_error(
        client.get(f"/v1/chips/{ECID}/image", params={"model": "no-version"}, headers=h),
        422,
        "validation_error",
    )
    assert_error(
        client.get(f"/v1/chips/{ECID}/image", params={"model": model}, headers=as_role("viewer")),
        403,
        "forbidden",
    )


def test_functional_test_bins_the_die_and_records_before_and_after(
    client: TestClient, as_role: Headers, lot: object, model: str, session_factory: sessionmaker[Session]
) -> None:
    _characterize(client, as_role)
    r = client.post(f"/v1/dies/{ECID}/functional-test", json={"model": model}, headers=as_role("station"))
    assert r.status_code == 201, r.text
    out = r.json()
    assert 0 <= out["accuracy"] <= 1 and 0 <= out["accuracy_uncalibrated"] <= 1 and out["n_clips"] == 24
    assert out["provenance"]["driver"] == "simulated" and out["retries"] == 0
    g = grade(out["accuracy"])
    assert (out["hard_bin"], out["soft_bin"], out["bin_label"]) == (g.hard_bin, g.soft_bin, g.label)
    with session_scope(session_factory) as s:
        rows = s.scalars(select(TestResult).order_by(TestResult.id)).all()
        assert [r.image_id is None for r in rows] == [True, False]
        assert rows[0].provenance_id == rows[1].provenance_id is not None
        assert rows[1].provenance is not None and rows[1].provenance.site == out["provenance"]["site"]
        image = s.get(Image, rows[1].image_id)
        sig = s.scalars(select(Signature)).one()
        assert image is not None and image.provenance_id == sig.provenance_id is not None
        assert rows[1].accuracy == pytest.approx(out["accuracy"]) and rows[1].soft_bin == out["soft_bin"]
    again = client.post(
        f"/v1/dies/{ECID}/functional-test", json={"model": model, "force": False}, headers=as_role("station")
    )
    assert again.json()["created"] is False and again.json()["accuracy"] == out["accuracy"]
    assert _count(session_factory, select(func.count()).select_from(TestResult)) == 2


def test_concurrent_characterize_never_duplicates_nor_loses_a_signature(
    client: TestClient, as_role: Headers, session_factory: sessionmaker[Session]
) -> None:
    """16 requests at once: 8 for 8 distinct dies, 8 for one die."""
    sites = [[x, 0] for x in range(8)]
    register(client, as_role("engineer"), sites=sites)
    ecids = [f"LOT0001-W01-X{x:+04d}Y+000" for x in range(8)] + ["LOT0001-W01-X+000Y+000"] * 8
    h = as_role("station")
    with ThreadPoolExecutor(16) as pool:
        statuses = list(
            pool.map(
                lambda e: client.post(f"/v1/dies/{e}/characterize", json=BUDGET, headers=h).status_code, ecids
            )
        )
    assert statuses == [201] * 16
    with session_scope(session_factory) as s:
        per_die = dict(
            s.execute(select(Die.ecid, func.count(Signature.id)).join(Signature).group_by(Die.ecid)).all()
        )
        current = dict(
            s.execute(
                select(Die.ecid, func.count(Signature.id))
                .join(Signature)
                .where(Signature.is_current)
                .group_by(Die.ecid)
            ).all()
        )
        versions = sorted(s.scalars(select(Signature.version).join(Die).where(Die.ecid == ECID)))
    assert per_die[ECID] == 9 and all(per_die[e] == 1 for e in ecids[1:8])
    assert set(current.values()) == {1} and len(current) == 8
    assert versions == list(range(1, 10))

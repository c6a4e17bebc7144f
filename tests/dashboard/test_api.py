"""Every data endpoint of the dashboard and the exports: 401 without a key, readable by a viewer, 404 for a
lot, wafer, die or job that does not exist. The HTML shell and its assets are public."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.dashboard import assets
from app.db.session import session_scope
from tests.dashboard.demo import DemoLot, add_second_model_results, build_demo_lot

ECID = "DEMO001-W01-X+000Y+000"
DATA_ENDPOINTS = [
    "/v1/dashboard/lots",
    "/v1/dashboard/lots/DEMO001",
    "/v1/dashboard/lots/DEMO001/wafers/1",
    f"/v1/dashboard/dies/{ECID}",
    "/v1/dashboard/jobs",
    "/v1/dashboard/jobs/{job}",
    "/v1/lots/DEMO001/stdf",
    "/v1/lots/DEMO001/wafers/1/e142",
    "/v1/lots/DEMO001/dies.csv",
    "/v1/lots/DEMO001/dies.parquet",
]
NOT_FOUND = [
    "/v1/dashboard/lots/NOPE",
    "/v1/dashboard/lots/NOPE/wafers/1",
    "/v1/dashboard/lots/DEMO001/wafers/9",
    "/v1/dashboard/dies/DEMO001-W01-X+099Y+099",
    "/v1/dashboard/dies/NOPE-W01-X+000Y+000",
    "/v1/dashboard/jobs/999999",
    "/v1/lots/NOPE/stdf",
    "/v1/lots/NOPE/wafers/1/e142",
    "/v1/lots/DEMO001/wafers/9/e142",
    "/v1/lots/NOPE/dies.csv",
    "/v1/lots/NOPE/dies.parquet",
]


@pytest.fixture
def demo(session_factory: sessionmaker[Session]) -> DemoLot:
    with session_scope(session_factory) as s:
        return build_demo_lot(s, n_wafers=1, diameter=4)  # small: built for every test


def _url(path: str, demo: DemoLot) -> str:
    return path.replace("{job}", str(demo.job_id))


@pytest.mark.parametrize("path", DATA_ENDPOINTS)
def test_data_needs_a_key(client: TestClient, demo: DemoLot, path: str) -> None:
    r = client.get(_url(path, demo))
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"
    r = client.get(_url(path, demo), headers={"X-API-Key": "cim_00000000_" + "x" * 43})
    assert r.status_code == 401


@pytest.mark.parametrize("role", ["viewer", "station", "engineer", "admin"])
@pytest.mark.parametrize("path", DATA_ENDPOINTS)
def test_every_role_reads(
    client: TestClient, as_role: Callable[[str], dict[str, str]], demo: DemoLot, path: str, role: str
) -> None:
    r = client.get(_url(path, demo), headers=as_role(role))
    assert r.status_code == 200, r.text
    assert r.content


@pytest.mark.parametrize("path", NOT_FOUND)
def test_unknown_things_are_404(
    client: TestClient, as_role: Callable[[str], dict[str, str]], demo: DemoLot, path: str
) -> None:
    r = client.get(path, headers=as_role("viewer"))
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found"


MODEL_FILTERED = [p for p in DATA_ENDPOINTS if "/jobs" not in p]


@pytest.mark.parametrize("path", MODEL_FILTERED)
def test_every_view_and_export_takes_a_model(
    client: TestClient, as_role: Callable[[str], dict[str, str]], demo: DemoLot, path: str
) -> None:
    viewer = as_role("viewer")
    r = client.get(path, params={"model": demo.model}, headers=viewer)
    assert r.status_code == 200, r.text
    r = client.get(path, params={"model": "kws-bnn@9"}, headers=viewer)
    assert r.status_code == 404, r.text
    assert r.json()["error"] == {"code": "not_found", "message": "no model kws-bnn@9", "details": None}
    for malformed in ("kws-bnn", "a@b@c", "kws bnn@1"):
        r = client.get(path, params={"model": malformed}, headers=viewer)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "validation_error"


def test_with_two_models_views_show_the_most_tested_and_exports_ask(
    client: TestClient,
    as_role: Callable[[str], dict[str, str]],
    demo: DemoLot,
    session_factory: sessionmaker[Session],
) -> None:
    with session_scope(session_factory) as s:
        second = add_second_model_results(s, demo)
    viewer = as_role("viewer")
    lot = client.get("/v1/dashboard/lots/DEMO001", headers=viewer).json()
    assert lot["model"] == demo.model
    assert [(m["model"], m["n_tested"]) for m in lot["models"]] == [
        (demo.model, len(demo.tested)),
        (second.model, len(second.tested)),
    ]
    lot = client.get("/v1/dashboard/lots/DEMO001", params={"model": second.model}, headers=viewer).json()
    assert (lot["model"], lot["n_tested"]) == (second.model, len(second.tested))
    assert {b["soft_bin"] for b in lot["pareto"]} == {d.soft_bin for d in second.tested}
    (row,) = client.get("/v1/dashboard/lots", headers=viewer).json()["items"]
    assert (row["model"], row["n_tested"]) == (demo.model, len(demo.tested))
    wafer = client.get("/v1/dashboard/lots/DEMO001/wafers/1", params={"model": second.model}, headers=viewer)
    assert {d["ecid"]: d["soft_bin"] for d in wafer.json()["dies"]} == {
        d.ecid: d.soft_bin for d in second.on_wafer(1)
    }
    for path in [p for p in MODEL_FILTERED if p.startswith("/v1/lots/")]:
        r = client.get(path, headers=viewer)
        assert r.status_code == 422, path
        assert r.json()["error"]["code"] == "model_required"
        assert client.get(path, params={"model": second.model}, headers=viewer).status_code == 200


def test_malformed_ecid_is_422(
    client: TestClient, as_role: Callable[[str], dict[str, str]], demo: DemoLot
) -> None:
    r = client.get("/v1/dashboard/dies/not-an-ecid", headers=as_role("viewer"))
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_ecid"


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard",
        "/dashboard/",
        "/dashboard/lots/DEMO001",
        "/dashboard/lots/DEMO001/wafers/2",
        f"/dashboard/dies/{ECID}",
        "/dashboard/jobs/3",
    ],
)
def test_the_html_shell_is_public(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<main id="app"' in r.text
    # Everything the page loads comes from the app itself.
    assert "/dashboard/static/plotly.min.js" in r.text and "https://" not in r.text


def test_assets_are_served_by_the_app(client: TestClient) -> None:
    js = client.get("/dashboard/static/plotly.min.js")
    assert js.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript")
    assert b"plotly.js" in js.content[:200]
    assert client.get("/dashboard/static/dashboard.js").status_code == 200
    assert client.get("/dashboard/static/dashboard.css").headers["content-type"].startswith("text/css")


@pytest.mark.parametrize("name", ["nope.js", "..%2Fassets.py", ".hidden", "index.html"])
def test_only_the_assets_are_served(client: TestClient, name: str) -> None:
    assert client.get(f"/dashboard/static/{name}").status_code == 404


def test_asset_lookup_refuses_paths() -> None:
    assert assets.static_file("../assets.py") is None
    assert assets.static_file("dashboard.js") is not None
    assert assets.plotly_js_path() is not None

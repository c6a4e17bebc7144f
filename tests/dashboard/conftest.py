"""A live server for browser tests: uvicorn in a thread on 127.0.0.1 (a free port) over a temporary SQLite
database, with a bootstrap admin key; the demo lot is registered over HTTP and its results with two
models (the second on fewer dies, with bins of its own) are added through the services and the ORM."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from app.config import Settings
from app.db.session import make_engine, make_session_factory, session_scope
from app.main import create_app
from tests.conftest import SHARED_CACHE_DIR
from tests.dashboard.demo import DemoLot, add_demo_results, add_second_model_results, demo_wafer_specs

ADMIN_KEY = "cim_admin000_browser-test-admin-key-0123456789abcdef"


@dataclass
class LiveServer:
    base_url: str
    database_url: str
    viewer_key: str
    demo: DemoLot
    """The lot as seen with its most-tested model, the dashboard's default."""
    second: DemoLot
    """The lot as seen with the second model."""


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("live")
    database_url = f"sqlite:///{tmp / 'cimcal.db'}"
    settings = Settings(
        database_url=database_url,
        auto_migrate=True,
        # The generated datasets registered at start-up are shared with the other tests of the machine.
        cache_dir=SHARED_CACHE_DIR,
        eval_clips_per_class=4,
        image_store_dir=tmp / "images",
        auth_enabled=True,
        bootstrap_admin_key=SecretStr(ADMIN_KEY),
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the test server did not start")
        time.sleep(0.05)
    base_url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base_url, headers={"X-API-Key": ADMIN_KEY}, timeout=30) as http:
            r = http.post("/v1/keys", json={"role": "viewer", "name": "dashboard"})
            assert r.status_code == 201, r.text
            viewer_key = r.json()["key"]
            wafers = [{"number": w.number, "shape": w.shape} for w in demo_wafer_specs()]
            r = http.post("/v1/lots", json={"lot_id": "DEMO001", "product": "KWS-BCIM-1", "wafers": wafers})
            assert r.status_code == 201, r.text
        engine = make_engine(database_url)
        with session_scope(make_session_factory(engine)) as session:
            demo = add_demo_results(session, "DEMO001")
            second = add_second_model_results(session, demo)
        engine.dispose()
        yield LiveServer(base_url, database_url, viewer_key, demo, second)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    path = Path(__file__).resolve().parents[2] / "var" / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path

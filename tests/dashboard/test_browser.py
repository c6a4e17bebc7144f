"""Headless Chromium against a live server with the demo lot: sign in, then every page renders without
console errors, the wafer map has one element per die in its soft bin's colour, the job page follows a
job to its end; screenshots go to var/screenshots/ for the CI log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import update

from app.db.base import utcnow
from app.db.session import make_engine, make_session_factory, session_scope
from app.db.tables import Job, JobItem, JobState
from app.services.reporting.bins import soft_bin_color
from app.services.reporting.wafers import PARAMETRICS
from tests.dashboard.conftest import LiveServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="Chromium is not installed (apt-get install -y chromium chromium-driver)",
    ),
]

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1100",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_ready(driver: WebDriver, view: str, timeout: float = 30) -> None:
    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return document.body.dataset.ready") in (view, "error"),
    )
    state = driver.execute_script("return document.body.dataset.ready")
    if state != view:
        error = driver.find_element(By.ID, "error").text
        pytest.fail(f"page {driver.current_url} failed: {error}")


def _console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def _open(driver: WebDriver, url: str, view: str) -> None:
    driver.get(url)
    _wait_ready(driver, view)
    stray = driver.execute_script(
        "const w = document.createTreeWalker(document.getElementById('app'), NodeFilter.SHOW_TEXT);"
        "const out = []; while (w.nextNode()) { const t = w.currentNode.textContent.trim();"
        " if (['null', 'undefined', 'NaN'].includes(t)) out.push(t); } return out;"
    )
    assert stray == [], f"{url} shows {stray}"


def _shot(driver: WebDriver, directory: Path, name: str) -> Path:
    path = directory / f"{name}.png"
    # Full-page height, so the whole view is in the picture.
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(1100, int(height) + 40), 6000))
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1100)
    print(f"screenshot: {path}")
    return path


@pytest.fixture(scope="module")
def signed_in(browser: WebDriver, live_server: LiveServer) -> WebDriver:
    _open(browser, f"{live_server.base_url}/dashboard", "login")
    browser.find_element(By.ID, "api-key").send_keys(live_server.viewer_key)
    browser.find_element(By.ID, "login-submit").click()
    _wait_ready(browser, "home")
    assert browser.execute_script("return localStorage.getItem('cimcal.apiKey')") == live_server.viewer_key
    return browser


def test_home_lists_the_lot(signed_in: WebDriver, live_server: LiveServer, screenshot_dir: Path) -> None:
    row = signed_in.find_element(By.CSS_SELECTOR, "#lots tr[data-lot='DEMO001']")
    cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
    demo = live_server.demo
    assert cells[4] == str(len(demo.dies))
    assert cells[6] == str(len(demo.tested))
    passed = sum(1 <= d.soft_bin <= 9 for d in demo.tested if d.soft_bin is not None)
    assert cells[7] == str(passed)
    assert f"{100 * passed / len(demo.tested):.1f} %" in cells[8]
    first = sum(bool(d.first_pass) for d in demo.with_result)
    assert f"{100 * first / len(demo.with_result):.1f} %" in cells[9]
    assert "running" in cells[10]
    _shot(signed_in, screenshot_dir, "dashboard-home")
    assert _console_errors(signed_in) == []


@pytest.mark.parametrize("wafer", [1, 2, 3])
def test_wafer_map_has_one_element_per_die_in_its_bin_colour(
    signed_in: WebDriver, live_server: LiveServer, screenshot_dir: Path, wafer: int
) -> None:
    _open(signed_in, f"{live_server.base_url}/dashboard/lots/DEMO001/wafers/{wafer}", "wafer")
    rects = signed_in.find_elements(By.CSS_SELECTOR, "#wafer-map rect.die")
    expected = {d.ecid: d for d in live_server.demo.on_wafer(wafer)}
    drawn = {
        r.get_attribute("data-ecid"): (
            r.get_attribute("fill"),
            r.get_attribute("data-soft-bin"),
            int(r.get_attribute("data-x") or 0),
            int(r.get_attribute("data-y") or 0),
        )
        for r in rects
    }
    assert len(rects) == len(expected) == len(drawn)
    for ecid, d in expected.items():
        fill, soft, x, y = drawn[ecid]
        assert (x, y) == (d.x, d.y)
        assert soft == ("" if d.soft_bin is None else str(d.soft_bin))
        assert fill == soft_bin_color(d.soft_bin), ecid
    # Every parametric map is drawn by plotly.
    assert len(signed_in.find_elements(By.CSS_SELECTOR, ".param-map .main-svg")) >= len(PARAMETRICS)
    # Clicking a die shows its details.
    target = next(d for d in expected.values() if d.soft_bin is not None)
    signed_in.find_element(By.CSS_SELECTOR, f"#wafer-map rect[data-ecid='{target.ecid}']").click()
    panel = signed_in.find_element(By.ID, "die-panel")
    assert panel.get_attribute("data-ecid") == target.ecid
    assert target.ecid in panel.text
    if wafer == 1:
        _shot(signed_in, screenshot_dir, "dashboard-wafer-DEMO001-W01")
    assert _console_errors(signed_in) == []


def test_lot_page(signed_in: WebDriver, live_server: LiveServer, screenshot_dir: Path) -> None:
    _open(signed_in, f"{live_server.base_url}/dashboard/lots/DEMO001", "lot")
    for plot in ("pareto", "accuracy", "trend-yield", "trend-accuracy"):
        assert signed_in.find_elements(By.CSS_SELECTOR, f"#{plot} .main-svg"), plot
    bins = {d.soft_bin for d in live_server.demo.with_result}  # the alarm bin 0 too
    bars = signed_in.find_elements(By.CSS_SELECTOR, "#pareto .barlayer .point")
    assert len(bars) == len(bins)
    assert len(signed_in.find_elements(By.CSS_SELECTOR, "#wafers tbody tr")) == len(live_server.demo.wafers)
    _shot(signed_in, screenshot_dir, "dashboard-lot-DEMO001")
    assert _console_errors(signed_in) == []


def test_die_page(signed_in: WebDriver, live_server: LiveServer, screenshot_dir: Path) -> None:
    second = live_server.second.dies
    die = next(d for d in live_server.demo.tested if second[d.ecid].soft_bin is None and not d.n_alarms)
    _open(signed_in, f"{live_server.base_url}/dashboard/dies/{die.ecid}", "die")
    assert die.ecid in signed_in.find_element(By.TAG_NAME, "h1").text
    assert len(signed_in.find_elements(By.CSS_SELECTOR, "#tests tbody tr")) == 2  # before and after
    assert len(signed_in.find_elements(By.CSS_SELECTOR, "#images tbody tr")) == 1
    assert not signed_in.find_elements(By.ID, "model-select")  # one model: nothing to choose
    assert signed_in.find_elements(By.CSS_SELECTOR, "#signature-figures")
    # Which tester measured it: the demo lot's dies alternate between two sites of one tester.
    measured_by = signed_in.find_element(By.ID, "provenance").text
    assert (
        "ACME Test Systems CIM-9" in measured_by
        and f"TCPIP0::10.0.0.{5 + (die.site or 0)}::INSTR" in measured_by
    )
    assert f"site {die.site}" in signed_in.find_element(By.ID, "tests").text
    decoded = bool(signed_in.find_elements(By.CSS_SELECTOR, "#sig-gain .main-svg"))
    if decoded:
        assert signed_in.find_elements(By.CSS_SELECTOR, "#sig-offset .main-svg")
        assert signed_in.find_elements(By.CSS_SELECTOR, "#sig-defects .main-svg")
    else:  # the calibration package is absent: the page says why
        assert signed_in.find_element(By.ID, "signature-note").text
    _shot(signed_in, screenshot_dir, "dashboard-die")
    assert _console_errors(signed_in) == []


def test_die_page_of_an_alarmed_die_shows_no_measurement(
    signed_in: WebDriver, live_server: LiveServer, screenshot_dir: Path
) -> None:
    (die,) = live_server.demo.alarmed
    _open(signed_in, withmodel(live_server, die.ecid), "die")
    rows = signed_in.find_elements(By.CSS_SELECTOR, "#tests tbody tr")
    cells = [c.text for c in rows[0].find_elements(By.TAG_NAME, "td")]
    assert len(rows) == 1 and cells[1] == "alarm (retest)"
    assert cells[2] == "–" and cells[5] == "–"  # no accuracy, no test time: nothing was measured
    assert "alarm: retest, no verdict" in signed_in.find_element(By.CSS_SELECTOR, ".cards").text
    assert _console_errors(signed_in) == []


def withmodel(live_server: LiveServer, ecid: str) -> str:
    return f"{live_server.base_url}/dashboard/dies/{ecid}?model={live_server.demo.model.replace('@', '%40')}"


def test_lot_page_lists_the_models_and_shows_the_chosen_one(
    signed_in: WebDriver, live_server: LiveServer, screenshot_dir: Path
) -> None:
    first, second = live_server.demo, live_server.second
    _open(signed_in, f"{live_server.base_url}/dashboard/lots/DEMO001", "lot")
    rows = signed_in.find_elements(By.CSS_SELECTOR, "#models tbody tr")
    assert [r.get_attribute("data-model") for r in rows] == [first.model, second.model]
    cells = [c.text for c in rows[1].find_elements(By.TAG_NAME, "td")]
    passed = sum(1 <= (d.soft_bin or 0) <= 9 for d in second.tested)
    assert cells[:3] == [second.model, str(len(second.tested)), str(passed)]
    assert f"{100 * passed / len(second.tested):.1f} %" in cells[3]
    assert first.model in signed_in.find_element(By.ID, "model-note").text
    download = signed_in.find_element(
        By.CSS_SELECTOR, "button.download[data-path$='/stdf?model=kws-bnn%401.0.0']"
    )
    assert download.text == "STDF V4"

    # Choosing the second model reloads the page with its bins.
    select = signed_in.find_element(By.ID, "model-select")
    select.find_element(By.CSS_SELECTOR, f"option[value='{second.model}']").click()
    WebDriverWait(signed_in, 15).until(lambda d: "model=" in d.current_url)
    _wait_ready(signed_in, "lot")
    assert signed_in.find_element(By.ID, "model").text == second.model
    assert not signed_in.find_elements(By.ID, "model-note")
    bars = signed_in.find_elements(By.CSS_SELECTOR, "#pareto .barlayer .point")
    assert len(bars) == len({d.soft_bin for d in second.tested})
    wafer_link = signed_in.find_element(By.CSS_SELECTOR, "#wafers tbody tr a")
    assert (wafer_link.get_attribute("href") or "").endswith("/wafers/1?model=digits-bnn%401")
    _shot(signed_in, screenshot_dir, "dashboard-lot-DEMO001-second-model")
    assert _console_errors(signed_in) == []


def test_wafer_map_of_the_second_model(signed_in: WebDriver, live_server: LiveServer) -> None:
    second = live_server.second
    _open(signed_in, f"{live_server.base_url}/dashboard/lots/DEMO001/wafers/1?model={second.model}", "wafer")
    drawn = {
        r.get_attribute("data-ecid"): (r.get_attribute("fill"), r.get_attribute("data-soft-bin"))
        for r in signed_in.find_elements(By.CSS_SELECTOR, "#wafer-map rect.die")
    }
    expected = {d.ecid: d for d in second.on_wafer(1)}
    assert set(drawn) == set(expected)
    for ecid, d in expected.items():
        assert drawn[ecid] == (soft_bin_color(d.soft_bin), "" if d.soft_bin is None else str(d.soft_bin)), (
            ecid
        )
    target = next(d for d in expected.values() if d.soft_bin is not None)
    signed_in.find_element(By.CSS_SELECTOR, f"#wafer-map rect[data-ecid='{target.ecid}']").click()
    panel = signed_in.find_element(By.ID, "die-panel")
    assert second.model in panel.text
    die_link = panel.find_element(By.CSS_SELECTOR, "a")
    assert (die_link.get_attribute("href") or "").endswith(f"/dies/{target.ecid}?model=digits-bnn%401")

    # The die, tested with both models, shows the chosen one and offers the other.
    die_link.click()
    _wait_ready(signed_in, "die")
    assert signed_in.find_element(By.ID, "model").text == second.model
    options = signed_in.find_elements(By.CSS_SELECTOR, "#model-select option")
    assert {o.get_attribute("value") for o in options} == {live_server.demo.model, second.model}
    assert len(signed_in.find_elements(By.CSS_SELECTOR, "#images tbody tr")) == 2
    assert _console_errors(signed_in) == []


def test_job_page_follows_the_job_to_its_end(
    signed_in: WebDriver, live_server: LiveServer, screenshot_dir: Path
) -> None:
    job_id = live_server.demo.job_id
    _open(signed_in, f"{live_server.base_url}/dashboard/jobs/{job_id}", "job")
    assert signed_in.find_element(By.ID, "job-state").text == "running"
    progress = float(signed_in.find_element(By.ID, "job-progress").get_attribute("data-progress") or 0)
    assert 0 < progress < 1
    _shot(signed_in, screenshot_dir, "dashboard-job-running")

    engine = make_engine(live_server.database_url)
    with session_scope(make_session_factory(engine)) as session:
        session.execute(update(JobItem).where(JobItem.job_id == job_id).values(state=JobState.succeeded))
        session.execute(
            update(Job).where(Job.id == job_id).values(state=JobState.succeeded, finished_at=utcnow())
        )
    engine.dispose()
    WebDriverWait(signed_in, 15).until(lambda d: d.find_element(By.ID, "job-state").text == "succeeded")
    assert signed_in.find_element(By.ID, "job-progress").get_attribute("data-progress") == "1.0000"
    assert _console_errors(signed_in) == []


def test_signing_out_forgets_the_key(signed_in: WebDriver, live_server: LiveServer) -> None:
    _open(signed_in, f"{live_server.base_url}/dashboard", "home")
    signed_in.find_element(By.ID, "logout").click()
    _wait_ready(signed_in, "login")
    assert signed_in.execute_script("return localStorage.getItem('cimcal.apiKey')") is None
    assert _console_errors(signed_in) == []


def test_no_asset_comes_from_elsewhere(signed_in: WebDriver, live_server: LiveServer) -> None:
    _open(signed_in, f"{live_server.base_url}/dashboard", "login")
    urls = signed_in.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls, "no resources loaded"
    assert all(u.startswith(live_server.base_url) or u.startswith("data:") for u in urls), json.dumps(urls)

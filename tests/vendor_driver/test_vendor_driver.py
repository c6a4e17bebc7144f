"""A third-party driver with its own physics, used the way a vendor would: registered through an
entry point, validated by the contract suite, and calibrating a die end to end through the service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from hardware import registry
from hardware.driver import DieAddress
from tests.conftest import SHARED_CACHE_DIR
from tests.hardware.contract import targets
from tests.vendor_driver.driver import VendorDriver
from tests.vendor_driver.physics import vendor_die
from tests.vendor_driver.plugin import ROOT, subprocess_env

ADMIN_KEY = "vendor-test-admin-key-0123456789abcdef"
CORNER = {"corner": 2.5}


def test_the_entry_point_registers_the_vendor_driver(vendor_site: Path) -> None:
    assert "vendor" in registry.available_drivers() and "simulated" in registry.available_drivers()
    assert registry.driver_class("vendor") is VendorDriver
    d = registry.create_driver("vendor", {"corner": 2.0, "seed": 3}, site=1)
    assert isinstance(d, VendorDriver) and (d.corner, d.seed, d.site) == (2.0, 3, 1)
    with pytest.raises(registry.DriverOptionsError, match="corner"):
        registry.validate_options("vendor", {"corner": -1})
    with pytest.raises(registry.DriverOptionsError, match="variation_scale"):
        registry.validate_options("vendor", {"variation_scale": 2})  # the simulator's option


def test_without_the_distribution_there_is_no_vendor_driver() -> None:
    assert "vendor" not in registry.available_drivers()


def test_contract_options_go_to_the_named_driver_only(vendor_site: Path) -> None:
    assert targets({}) == [("simulated", {}), ("vendor", {})]
    assert targets({"CIMCAL_CONTRACT_DRIVER": "vendor", "CIMCAL_CONTRACT_OPTIONS": '{"corner": 2}'}) == [
        ("vendor", {"corner": 2})
    ]
    with pytest.raises(ValueError, match="without CIMCAL_CONTRACT_DRIVER"):
        targets({"CIMCAL_CONTRACT_OPTIONS": '{"corner": 2}'})


def test_the_dies_are_a_pure_function_of_seed_and_address() -> None:
    g = VendorDriver().connect().geometry()
    a = DieAddress("ACME1", 3, 4, -2)
    one, two = vendor_die(7, a, g, 1.0), vendor_die(7, a, g, 1.0)
    assert np.array_equal(one.gain, two.gain) and np.array_equal(one.edges_mac, two.edges_mac)
    assert not np.array_equal(one.gain, vendor_die(8, a, g, 1.0).gain)
    assert not np.array_equal(one.gain, vendor_die(7, DieAddress("ACME1", 3, 4, -1), g, 1.0).gain)
    assert np.all(np.diff(one.edges_mac, axis=-1) > 0), "ADC edges must stay increasing"


def test_saturation_and_ir_drop_compress_the_transfer() -> None:
    """All +1 weights: the code per active row falls as more rows are driven (the simulator's is flat)."""
    d = VendorDriver(read_noise_mac=0.0, corner=0.0).connect()
    d.probe(DieAddress("ACME1", 1, 0, 0))
    g = d.geometry()
    d.write_macro(0, np.ones((g.rows, g.phys_cols), np.int8))
    x = np.zeros((2, g.rows), np.uint8)
    x[0, :8], x[1, :32] = 1, 1
    codes = d.read_macro(0, x).astype(float).mean(axis=1)
    assert codes[0] == pytest.approx(8, abs=0.6)  # few rows: nearly ideal
    expected = 24 * np.tanh(32 * (1 - 0.2 * 32 / g.rows) / 24)  # 21.2, not 32
    assert codes[1] == pytest.approx(expected, abs=1.0)


def test_the_contract_suite_passes_on_the_vendor_driver(vendor_site: Path) -> None:
    """The vendor's own command (docs/drivers.md), in a fresh interpreter that sees the plugin."""
    env = subprocess_env(
        vendor_site,
        CIMCAL_CONTRACT_DRIVER="vendor",
        CIMCAL_CONTRACT_OPTIONS='{"corner": 2.5, "seed": 11}',
        CIMCAL_CONTRACT_DIE="ACME1-W03-X+004Y-002",
    )
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "tests/hardware/test_driver_contract.py",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "14 passed" in out.stdout, out.stdout[-2000:]


def test_cimcal_drivers_list_and_check_pass_on_the_vendor_driver(vendor_site: Path) -> None:
    """``cimcal drivers list`` shows the plugin and its options; ``cimcal drivers check`` passes."""
    cli = [sys.executable, "-m", "app.cli", "drivers"]
    env = subprocess_env(vendor_site)
    listed = subprocess.run([*cli, "list"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "vendor 0.1.0" in listed.stdout and "corner" in listed.stdout, listed.stdout
    check = [*cli, "check", "vendor", "--options", '{"corner": 2.5}', "--die", "ACME1-W02-X-003Y+001"]
    out = subprocess.run(check, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "passed" in out.stdout.splitlines()[-1], out.stdout


def test_calibrating_a_vendor_die_through_the_service_recovers_accuracy(
    vendor_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """characterize -> compensate -> functional test over HTTP with CIMCAL_DRIVER=vendor (corner 2.5)."""
    env = {
        "CIMCAL_DRIVER": "vendor",
        "CIMCAL_DRIVER_OPTIONS": '{"corner": 2.5}',
        "CIMCAL_DATABASE_URL": f"sqlite:///{tmp_path / 'vendor.db'}",
        "CIMCAL_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "CIMCAL_CACHE_DIR": str(SHARED_CACHE_DIR),
        "CIMCAL_EVAL_CLIPS_PER_CLASS": "4",
        "CIMCAL_FUNCTIONAL_TEST_CLIPS": "450",
        "CIMCAL_IMAGE_STORE_DIR": str(tmp_path / "images"),
        "CIMCAL_TEST_SITES": "1",
        "CIMCAL_JOB_RUNNER": "local",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    h = {"X-API-Key": ADMIN_KEY}
    ecid = "ACME1-W01-X+005Y-005"
    with TestClient(create_app(Settings())) as client:
        r = client.post(
            "/v1/lots",
            json={"lot_id": "ACME1", "product": "ACME-CIM-9", "wafers": [{"number": 1, "sites": [[5, -5]]}]},
            headers=h,
        )
        assert r.status_code == 201, r.text
        r = client.post(f"/v1/dies/{ecid}/characterize", json={}, headers=h)
        assert r.status_code == 201, r.text
        assert r.json()["tester_s"] > 0
        r = client.post(f"/v1/dies/{ecid}/functional-test", json={"model": "digits-bnn@1"}, headers=h)
        assert r.status_code == 201, r.text
        out = r.json()
    print("vendor die", out)
    assert out["n_clips"] == 450
    # digits-bnn@1 scores 98.0 % on an ideal chip; this die at corner 2.5 loses most of it uncalibrated.
    assert out["accuracy_uncalibrated"] < 0.6, out
    assert out["accuracy"] >= 0.94, out
    assert out["soft_bin"] == 1, out


def test_the_quality_benchmark_runs_on_the_vendor_driver(vendor_site: Path, tmp_path: Path) -> None:
    """``cimcal bench quality --driver vendor``: cimcal recovers the accuracy; no ORACLE (none offered)."""
    out_json = tmp_path / "quality.json"
    cmd = [sys.executable, "-m", "app.cli", "bench", "quality", "--driver", "vendor"]
    cmd += ["--driver-options", '{"corner": 2.5}', "--model", "digits-bnn@1", "--dies", "1"]
    cmd += [
        "--finetune-dies",
        "0",
        "--budget-dies",
        "0",
        "--workers",
        "1",
        "--no-docs",
        "--json",
        str(out_json),
    ]
    out = subprocess.run(
        cmd, cwd=ROOT, env=subprocess_env(vendor_site), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out_json.read_text())
    assert result["config"]["driver"] == {
        "name": "vendor",
        "version": "0.1.0",
        "options": {"corner": 2.5},
        "scale_option": None,
    }
    (row,) = result["summary"]
    assert row["scale"] is None and "oracle" not in row
    # uncalibrated runs on cimcal's tile copies too (fair baselines): they average noise, not the trim
    assert row["cimcal"]["mean"] >= 0.93 and row["uncalibrated"]["mean"] <= row["cimcal"]["mean"] - 0.1, row
    assert "finetune" not in row and row["baseline_b"]["mean"] > row["uncalibrated"]["mean"], row
    assert "## `digits-bnn@1 on vendor`" in out.stdout and "ORACLE |" not in out.stdout


def test_the_throughput_benchmark_runs_on_the_vendor_driver(vendor_site: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "throughput.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.throughput",
        "--driver",
        "vendor",
        "--driver-options",
        '{"corner": 2.5}',
    ]
    cmd += ["--wafers", "1", "--dies-per-wafer", "1", "--celery", "", "--json", str(out_json)]
    env = subprocess_env(vendor_site, CIMCAL_CACHE_DIR=str(SHARED_CACHE_DIR), CIMCAL_EVAL_CLIPS_PER_CLASS="4")
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert 'driver vendor {"corner": 2.5}' in out.stderr
    (local,) = json.loads(out_json.read_text())
    assert local["dies"] == 1 and local["failed_items"] == 0

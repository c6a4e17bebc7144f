"""The station's test sites from settings: driver options and per-site resources and options, merged and
validated by the driver's own model; secrets masked wherever the configuration is shown."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.services.hardware import DriverPool, StationConfigError, build_driver
from hardware.sim.driver import SimulatedDriver
from tests.hardware.plugins import KeyedDriver, registered

SITES = {
    "0": {"resource": "sim://bench-a"},
    "3": {"resource": "sim://bench-b", "options": {"p_timeout": 0.3, "noise_seed": 5}},
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "CIMCAL_SITES",
        "CIMCAL_SITES_FILE",
        "CIMCAL_DRIVER",
        "CIMCAL_DRIVER_OPTIONS",
        "CIMCAL_TEST_SITES",
        "CIMCAL_CORNER",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def plugins(tmp_path: Path) -> Iterator[Path]:
    with registered(tmp_path / "site") as site:
        yield site


def _sim(pool: DriverPool) -> list[SimulatedDriver]:
    drivers = pool.drivers
    assert all(isinstance(d, SimulatedDriver) for d in drivers)
    return drivers  # type: ignore[return-value]


def test_without_sites_every_site_is_built_alike_from_the_fleet_settings(env: pytest.MonkeyPatch) -> None:
    env.setenv("CIMCAL_TEST_SITES", "3")
    env.setenv("CIMCAL_FLEET_SEED", "11")
    env.setenv("CIMCAL_P_TIMEOUT", "0.05")
    pool = DriverPool.from_settings(Settings())
    assert [s.index for s in pool.sites] == [0, 1, 2] and {s.spec.resource for s in pool.sites} == {None}
    for d in _sim(pool):
        assert d.fleet.config.seed == 11 and d.fleet.config.faults.p_timeout == 0.05
    assert len({s.spec.options_sha256 for s in pool.sites}) == 1  # the site index is not an option


def test_sites_get_their_resource_and_options_over_the_station_options(env: pytest.MonkeyPatch) -> None:
    env.setenv("CIMCAL_FLEET_SEED", "11")
    env.setenv("CIMCAL_P_TIMEOUT", "0.01")
    env.setenv("CIMCAL_DRIVER_OPTIONS", json.dumps({"variation_scale": 2.0, "p_timeout": 0.02}))
    env.setenv("CIMCAL_SITES", json.dumps(SITES))
    settings = Settings()
    assert settings.test_sites == 2
    pool = DriverPool.from_settings(settings)
    a, b = _sim(pool)
    assert [s.index for s in pool.sites] == [0, 3]
    assert (a.site, a.resource, b.site, b.resource) == (0, "sim://bench-a", 3, "sim://bench-b")
    assert a.fleet.config.seed == b.fleet.config.seed == 11
    assert a.fleet.config.variation.variation_scale == b.fleet.config.variation.variation_scale == 2.0
    assert (a.fleet.config.faults.p_timeout, b.fleet.config.faults.p_timeout) == (0.02, 0.3)
    site_a, site_b = pool.sites
    assert site_a.spec.options_sha256 != site_b.spec.options_sha256
    with pool.acquire() as site:
        prov = site.provenance()
    assert (prov.driver, prov.vendor, prov.site, prov.resource) == (
        "simulated",
        "cimcal",
        site.index,
        site.spec.resource,
    )
    assert prov.options_sha256 == site.spec.options_sha256 and prov.driver_version and prov.host
    assert build_driver(settings, 3).resource == "sim://bench-b"
    with pytest.raises(StationConfigError, match="no test site 1"):
        build_driver(settings, 1)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_sites_file(env: pytest.MonkeyPatch, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"sites{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(SITES))
    else:
        path.write_text(
            "0:\n  resource: sim://bench-a\n3:\n  resource: sim://bench-b\n  options: {p_timeout: 0.3, noise_seed: 5}\n"
        )
    env.setenv("CIMCAL_SITES_FILE", str(path))
    settings = Settings()
    assert settings.sites_file == path and sorted(settings.sites or {}) == [0, 3]
    _, b = _sim(DriverPool.from_settings(settings))
    assert (b.resource, b.fleet.config.faults.p_timeout) == ("sim://bench-b", 0.3)


@pytest.mark.parametrize(
    ("variables", "match"),
    [
        ({"CIMCAL_SITES": json.dumps(SITES), "CIMCAL_SITES_FILE": "/x.json"}, "not both"),
        ({"CIMCAL_SITES": json.dumps(SITES), "CIMCAL_TEST_SITES": "4"}, "2 sites are configured"),
        ({"CIMCAL_SITES": "{}"}, "at least one site"),
        ({"CIMCAL_SITES": json.dumps({"255": {}})}, "outside 0..254"),
        ({"CIMCAL_SITES": json.dumps({"0": {"resorce": "x"}})}, "resorce"),
        ({"CIMCAL_SITES_FILE": "/nonexistent/sites.json"}, "CIMCAL_SITES_FILE"),
    ],
)
def test_bad_site_configuration_is_refused(
    env: pytest.MonkeyPatch, variables: dict[str, str], match: str
) -> None:
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(ValidationError, match=match):
        Settings()


def test_options_the_driver_refuses_name_the_site_and_the_field(env: pytest.MonkeyPatch) -> None:
    env.setenv("CIMCAL_SITES", json.dumps({"0": {}, "1": {"options": {"p_timeout": 7}}}))
    with pytest.raises(
        StationConfigError, match=r"test site 1: p_timeout: Input should be less than or equal to 1"
    ):
        DriverPool.from_settings(Settings())
    env.setenv("CIMCAL_SITES", json.dumps({"0": {}}))
    env.setenv("CIMCAL_DRIVER_OPTIONS", json.dumps({"fleet_sed": 1}))
    with pytest.raises(StationConfigError, match="fleet_sed: Extra inputs are not permitted"):
        DriverPool.from_settings(Settings())
    env.setenv("CIMCAL_DRIVER", "nosuchdriver")
    with pytest.raises(StationConfigError, match="no driver named 'nosuchdriver'"):
        DriverPool.from_settings(Settings())


def test_the_simulated_fleet_runs_at_the_configured_corner(env: pytest.MonkeyPatch) -> None:
    assert {d.info().extra["corner"] for d in DriverPool.from_settings(Settings()).drivers} == {"typical"}
    env.setenv("CIMCAL_CORNER", "aggressive")
    env.setenv("CIMCAL_SITES", json.dumps({"0": {}, "1": {"options": {"corner": "slow"}}}))
    assert [d.info().extra["corner"] for d in DriverPool.from_settings(Settings()).drivers] == [
        "aggressive",
        "slow",
    ]
    env.setenv("CIMCAL_CORNER", "fast")
    with pytest.raises(StationConfigError, match=r"test site 0: corner: .*unknown process corner 'fast'"):
        DriverPool.from_settings(Settings())


def test_a_plugin_gets_its_options_and_secrets_are_masked_everywhere_shown(
    env: pytest.MonkeyPatch, plugins: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env.setenv("CIMCAL_DRIVER", "keyed")
    env.setenv("CIMCAL_DRIVER_OPTIONS", json.dumps({"api_key": "hunter2"}))
    env.setenv(
        "CIMCAL_SITES", json.dumps({"0": {"resource": "10.0.0.5:5025"}, "1": {"resource": "10.0.0.6:5025"}})
    )
    settings = Settings()
    with caplog.at_level(logging.INFO, logger="app.services.hardware"):
        pool = DriverPool.from_settings(settings)
    drivers = pool.drivers
    assert all(isinstance(d, KeyedDriver) and d.api_key.get_secret_value() == "hunter2" for d in drivers)
    assert [d.resource for d in drivers] == ["10.0.0.5:5025", "10.0.0.6:5025"]
    shown = pool.describe()
    assert shown[0]["options"]["api_key"] == "**********" and shown[1]["resource"] == "10.0.0.6:5025"
    assert shown[0]["driver"] == "keyed" and shown[0]["driver_version"] == "3.1.4"
    assert "**********" in caplog.text
    for text in (json.dumps(shown), caplog.text, repr(settings), str(settings)):
        assert "hunter2" not in text
    with pool.acquire() as site:
        prov = site.provenance()
    assert (prov.vendor, prov.model, prov.serial) == ("Keyed Instruments", "K-1", f"K1-{site.spec.resource}")
    assert prov.info == {"fw": "7.2"}

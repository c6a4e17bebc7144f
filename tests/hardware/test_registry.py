"""The driver registry: entry points, the name rule, versions, options validated by each driver's own
model, options hashed with their secrets and shown without them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hardware import registry
from hardware.driver import DieAddress, NoOptions
from hardware.sim.driver import SimulatedDriver, SimulatedOptions
from tests.hardware.plugins import DIST_VERSION, KeyedDriver, registered

DIE = DieAddress("REG1", 1, 0, 0)


@pytest.fixture
def plugins(tmp_path: Path) -> Iterator[Path]:
    with registered(tmp_path / "site") as site:
        yield site


def test_the_builtin_driver_is_registered_with_its_options_model() -> None:
    assert "simulated" in registry.available_drivers()
    entry = registry.driver_entry("simulated")
    assert entry.cls is SimulatedDriver and entry.cls.Options is SimulatedOptions
    assert entry.version  # the cimcal distribution's
    assert set(registry.options_schema("simulated")["properties"]) >= {
        "fleet_seed",
        "p_timeout",
        "noise_seed",
    }


def test_plugins_load_by_entry_point_and_a_misnamed_one_is_broken(plugins: Path) -> None:
    assert {"keyed", "unversioned", "simulated"} <= set(registry.available_drivers())
    assert registry.driver_class("keyed") is KeyedDriver
    broken = registry.broken_drivers()
    assert "misnamed" in broken and "must equal Driver.name" in broken["misnamed"]
    with pytest.raises(registry.UnknownDriverError, match="misnamed"):
        registry.create_driver("misnamed", {"api_key": "k"})


def test_version_is_the_class_attribute_else_the_distribution_version(plugins: Path) -> None:
    assert registry.driver_version("keyed") == "3.1.4"
    assert registry.driver_version("unversioned") == DIST_VERSION


def test_bad_options_name_the_field_and_never_the_secret(plugins: Path) -> None:
    with pytest.raises(registry.DriverOptionsError, match="p_timeout") as e:
        registry.create_driver("simulated", {"p_timeout": 2.0})
    assert e.value.errors == ["p_timeout: Input should be less than or equal to 1"]
    with pytest.raises(registry.DriverOptionsError, match="fleet_sed: Extra inputs are not permitted"):
        registry.validate_options("simulated", {"fleet_sed": 1})
    with pytest.raises(registry.DriverOptionsError, match="api_key: Field required"):
        registry.create_driver("keyed", {})
    with pytest.raises(registry.DriverOptionsError) as e:
        registry.validate_options("keyed", {"api_key": "hunter2", "timeout_s": -1})
    assert "timeout_s" in str(e.value) and "hunter2" not in str(e.value)


def test_create_driver_passes_options_site_and_resource(plugins: Path) -> None:
    d = registry.create_driver(
        "keyed", {"api_key": "hunter2", "timeout_s": 2.5}, site=3, resource="10.0.0.9:5025"
    )
    assert isinstance(d, KeyedDriver)
    assert (d.site, d.resource, d.default_timeout_s) == (3, "10.0.0.9:5025", 2.5)
    assert d.api_key.get_secret_value() == "hunter2"
    assert d.connect().info().serial == "K1-10.0.0.9:5025"
    with pytest.raises(TypeError, match="KeyedOptions"):
        registry.create_driver("keyed", SimulatedOptions())


def test_a_driver_without_options_refuses_any() -> None:
    assert NoOptions.model_validate({}) == NoOptions()
    with pytest.raises(ValueError, match="Extra inputs"):
        NoOptions.model_validate({"resource": "x"})


def test_options_hash_covers_defaults_and_secrets_but_shows_no_secret(plugins: Path) -> None:
    a = registry.validate_options("keyed", {"api_key": "hunter2"})
    same = registry.validate_options("keyed", {"api_key": "hunter2", "timeout_s": 5.0})
    other_key = registry.validate_options("keyed", {"api_key": "hunter3"})
    assert registry.options_sha256(a) == registry.options_sha256(same)  # defaults are part of the hash
    assert registry.options_sha256(a) != registry.options_sha256(other_key)  # so is the secret
    assert len(registry.options_sha256(a)) == 64
    shown = registry.public_options(a)
    assert shown == {"api_key": "**********", "timeout_s": 5.0, "p_timeout": 0.0}
    assert "hunter2" not in repr(a) and "hunter2" not in str(shown)
    assert registry.canonical_options_json(a) == '{"api_key":"hunter2","p_timeout":0.0,"timeout_s":5.0}'


def test_simulated_sites_draw_their_own_noise_on_the_same_dies() -> None:
    def read(site: int) -> np.ndarray:
        d = registry.create_driver("simulated", {}, site=site).connect()
        d.probe(DIE)
        g = d.geometry()
        d.write_macro(0, np.ones((g.rows, g.phys_cols), np.int8))
        x = np.zeros((400, g.rows), np.uint8)
        x[:, :20] = 1
        return d.read_macro(0, x).astype(float)

    s0, s0_again, s1 = read(0), read(0), read(1)
    assert np.array_equal(s0, s0_again)
    assert not np.array_equal(s0, s1)
    assert np.abs(s0.mean(axis=0) - s1.mean(axis=0)).max() < 0.5  # the same die under the noise

"""Settings: the one place that reads the environment (every variable is prefixed ``CIMCAL_``)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from limits import parse_many
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_SITE_INDEX = 254
"""Site indices are 0..254 (STDF numbers them 1..255 in one byte)."""


class SiteConfig(BaseModel):
    """One test site: the address of its tester and its own driver options (over the station's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resource: str | None = Field(None, min_length=1, max_length=255)
    options: dict[str, Any] = Field(default_factory=dict, repr=False)


def _load_sites_file(path: Path) -> Any:
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:  # pyyaml is a dependency; a stripped install may lack it
            raise ValueError(f"CIMCAL_SITES_FILE {path}: reading YAML needs pyyaml") from e
        return yaml.safe_load(text)
    return json.loads(text)


class Settings(BaseSettings):
    """Service configuration. ``CIMCAL_DATABASE_URL=postgresql+psycopg://...`` etc."""

    model_config = SettingsConfigDict(env_prefix="CIMCAL_", extra="ignore")

    database_url: str = "sqlite:///./cimcal.db"
    # Run `alembic upgrade head` when the service starts (a fresh SQLite file is usable at once).
    auto_migrate: bool = True

    # Hardware: driver entry-point name and its options (a JSON object, validated by the driver's own
    # Options model when the test sites are built; SecretStr fields are masked wherever shown).
    driver: str = "simulated"
    driver_options: dict[str, Any] = Field(default_factory=dict, repr=False)
    # The simulated fleet's knobs: the simulated driver's defaults, under driver_options. corner is
    # a named process corner (docs/corners.md; the simulated driver's options validate the name when
    # the test sites are built); variation_scale multiplies its static sigmas.
    fleet_seed: int = 2022
    corner: str = "typical"
    variation_scale: float = Field(1.0, ge=0.0)
    p_timeout: float = Field(0.0, ge=0.0, le=1.0)
    p_contact_loss: float = Field(0.0, ge=0.0, le=1.0)
    p_gross_defect: float = Field(0.0, ge=0.0, le=1.0)

    # Dies tested at once: one driver per test site. Either just a count (test_sites, every site
    # built alike), or each site by index with its own resource and options: CIMCAL_SITES (JSON
    # {"0": {"resource": "TCPIP0::10.0.0.5::INSTR", "options": {...}}, ...}) or CIMCAL_SITES_FILE
    # (the same as a .json or .yaml file); then test_sites is the number of sites configured.
    test_sites: int = Field(2, ge=1, le=64)
    sites: dict[int, SiteConfig] | None = Field(None, repr=False)
    sites_file: Path | None = None
    # Read vectors per die for characterization (None: the calibration package's default).
    characterize_budget: int | None = Field(None, ge=1024)
    # The generated KWS datasets (kws-calib / kws-test): clips per class of the validation and
    # held-out test speakers. A functional test runs functional_test_clips samples of the model's
    # own test dataset, spread evenly over it.
    eval_clips_per_class: int = Field(40, ge=2, le=400)
    functional_test_clips: int = Field(240, ge=12)
    # Also run the uncompensated network in the functional test (accuracy before calibration).
    measure_uncalibrated: bool = True

    cache_dir: Path = Path("~/.cache/cimcal")
    # Content-addressed store of weight images (files named by their SHA-256).
    image_store_dir: Path = Path("./var/images")
    max_model_bytes: int = Field(16 * 1024 * 1024, gt=0)
    max_dataset_bytes: int = Field(64 * 1024 * 1024, gt=0)

    job_runner: Literal["local", "celery"] = "local"
    broker_url: str = "redis://127.0.0.1:6379/0"

    auth_enabled: bool = True
    # When set, this key is registered as an admin key at start-up (first deployment, CI).
    bootstrap_admin_key: SecretStr | None = None

    # The HTTP edge (app/api/edge.py, app/api/ratelimit.py). Request bodies other than model and
    # dataset uploads (limited above) are refused with 413 past max_body_bytes.
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    # What one request may ask for: a station's characterize budget (admins: the schema's maximum),
    # the dies registered with one lot.
    max_station_budget: int = Field(262_144, ge=1024)
    max_lot_dies: int = Field(20_000, ge=1)
    # Requests per API key (by its public prefix; per client IP without a key) and failed
    # authentications per client IP, in the `limits` notation ("100/second;3000/minute"); 429 past them.
    # memory:// counts per process; redis://... shares the counts between processes.
    rate_limit_enabled: bool = True
    rate_limit: str = "1000/second;30000/minute"
    auth_failure_limit: str = "30/minute"
    rate_limit_storage_uri: str = "memory://"
    # Idempotency-Key records are replayed for this long, then ignored and purged.
    idempotency_ttl_s: int = Field(24 * 3600, ge=1)

    @field_validator("rate_limit", "auth_failure_limit")
    @classmethod
    def _rate_limit_notation(cls, v: str) -> str:
        parse_many(v)  # ValueError names the part it cannot read
        return v

    @field_validator("cache_dir", "image_store_dir")
    @classmethod
    def _expand_user(cls, v: Path) -> Path:
        return v.expanduser()

    @model_validator(mode="before")
    @classmethod
    def _read_sites_file(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        path = data.get("sites_file")
        if path in (None, ""):
            return data
        if data.get("sites") is not None:
            raise ValueError("set CIMCAL_SITES or CIMCAL_SITES_FILE, not both")
        path = Path(path).expanduser()
        try:
            content = _load_sites_file(path)
        except (OSError, ValueError) as e:
            raise ValueError(f"CIMCAL_SITES_FILE {path}: {e}") from e
        return {**data, "sites_file": path, "sites": content}

    @model_validator(mode="after")
    def _count_sites(self) -> Settings:
        if self.sites is None:
            return self
        if not self.sites:
            raise ValueError("CIMCAL_SITES: configure at least one site")
        bad = [i for i in self.sites if not 0 <= i <= MAX_SITE_INDEX]
        if bad:
            raise ValueError(f"CIMCAL_SITES: site indices {bad} outside 0..{MAX_SITE_INDEX}")
        if "test_sites" in self.model_fields_set and self.test_sites != len(self.sites):
            raise ValueError(
                f"CIMCAL_TEST_SITES={self.test_sites} but {len(self.sites)} sites are configured"
            )
        if len(self.sites) > 64:
            raise ValueError("CIMCAL_SITES: at most 64 sites")
        self.test_sites = len(self.sites)
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()

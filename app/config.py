"""Settings: the one place that reads the environment (every variable is prefixed ``CIMCAL_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service configuration. ``CIMCAL_DATABASE_URL=postgresql+psycopg://...`` etc."""

    model_config = SettingsConfigDict(env_prefix="CIMCAL_", extra="ignore")

    database_url: str = "sqlite:///./cimcal.db"
    # Run `alembic upgrade head` when the service starts (a fresh SQLite file is usable at once).
    auto_migrate: bool = True

    # Hardware: driver entry-point name and the simulated fleet's knobs.
    driver: str = "simulated"
    fleet_seed: int = 2022
    variation_scale: float = Field(1.0, ge=0.0)
    p_timeout: float = Field(0.0, ge=0.0, le=1.0)
    p_contact_loss: float = Field(0.0, ge=0.0, le=1.0)
    p_gross_defect: float = Field(0.0, ge=0.0, le=1.0)

    # Dies tested at once: one driver per test site.
    test_sites: int = Field(2, ge=1, le=64)
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

    @field_validator("cache_dir", "image_store_dir")
    @classmethod
    def _expand_user(cls, v: Path) -> Path:
        return v.expanduser()


@lru_cache
def get_settings() -> Settings:
    return Settings()

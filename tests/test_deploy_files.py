"""Dockerfile and docker-compose.yml, checked without a Docker engine: every command is a real
``cimcal`` subcommand, every ``CIMCAL_*`` variable a real setting, the start order health-gated."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.cli import build_parser
from app.config import Settings
from app.main import create_app

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
OURS = [name for name, svc in SERVICES.items() if "build" in svc]


def _instructions(name: str) -> list[str]:
    """The arguments of every ``name`` instruction of the Dockerfile (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.*)$", text, re.MULTILINE)]


def _exec_form(arg: str) -> list[str]:
    parsed = yaml.safe_load(arg)  # a JSON array is valid YAML
    assert isinstance(parsed, list), f"use the exec form (a JSON array): {arg}"
    return [str(x) for x in parsed]


def _assert_cimcal_command(command: list[str]) -> None:
    assert command[0] == "cimcal", command
    try:
        build_parser().parse_args(command[1:])
    except SystemExit as e:
        pytest.fail(f"`{shlex.join(command)}` is not a valid cimcal command (exit {e.code})")


def _env_names() -> set[str]:
    names = set()
    for svc in SERVICES.values():
        env = svc.get("environment") or {}
        names |= set(env) if isinstance(env, dict) else {e.split("=", 1)[0] for e in env}
    for arg in _instructions("ENV"):
        names |= set(re.findall(r"\b(CIMCAL_[A-Z0-9_]+)=", arg))
    return {n for n in names if n.startswith("CIMCAL_")}


def test_compose_has_the_four_services_and_ours_run_real_cimcal_commands() -> None:
    assert {"api", "worker", "postgres", "redis"} <= set(SERVICES)
    assert {"api", "worker", "migrate"} <= set(OURS)
    for name in OURS:
        _assert_cimcal_command([str(c) for c in SERVICES[name]["command"]])
    assert SERVICES["migrate"]["command"][:3] == ["cimcal", "db", "upgrade"]
    assert SERVICES["worker"]["command"][:2] == ["cimcal", "worker"]
    assert SERVICES["api"]["command"][:2] == ["cimcal", "serve"]


def test_every_cimcal_variable_is_a_setting() -> None:
    names = _env_names()
    assert {"CIMCAL_DATABASE_URL", "CIMCAL_JOB_RUNNER", "CIMCAL_BROKER_URL"} <= names
    unknown = sorted(n for n in names if n.removeprefix("CIMCAL_").lower() not in Settings.model_fields)
    assert unknown == []


def test_the_compose_settings_are_valid_values() -> None:
    env = {k.removeprefix("CIMCAL_").lower(): v for k, v in SERVICES["api"]["environment"].items()}
    settings = Settings(**env)
    assert settings.job_runner == "celery" and settings.database_url.startswith("postgresql+psycopg://")
    assert not settings.auto_migrate  # the migrate service does it, once


def test_start_order_is_health_gated_and_migrations_run_first() -> None:
    for dep in ("postgres", "redis"):
        assert "test" in SERVICES[dep]["healthcheck"]
    assert SERVICES["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "worker"):
        assert SERVICES[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }


def test_api_and_worker_share_the_image_store() -> None:
    store = next(v for k, v in SERVICES["api"]["environment"].items() if k == "CIMCAL_IMAGE_STORE_DIR")
    for name in ("api", "worker"):
        assert any(str(v).endswith(f":{store}") for v in SERVICES[name]["volumes"])


def test_dockerfile_base_user_healthcheck_and_command() -> None:
    assert _instructions("FROM") == ["python:3.11-slim"]
    users = _instructions("USER")
    assert users and users[-1] not in ("root", "0")
    (health,) = _instructions("HEALTHCHECK")
    assert "/healthz" in health
    assert "/healthz" in create_app().openapi()["paths"]
    (cmd,) = _instructions("CMD")
    _assert_cimcal_command(_exec_form(cmd))


def test_torch_is_pinned_and_comes_from_a_local_wheel_or_the_default_index() -> None:
    assert any(a.startswith("TORCH_WHEEL") for a in _instructions("ARG"))
    (install,) = [r for r in _instructions("RUN") if "torch" in r]
    assert "torch==2.13.0" in install and "$TORCH_WHEEL" in install
    assert "index-url" not in DOCKERFILE  # no extra or replacement index
    runs = " ".join(_instructions("RUN"))
    assert runs.index("torch==2.13.0") < runs.index("pip install -e .")  # torch first


def test_dockerignore_keeps_the_build_context_small_but_not_the_wheels() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "tests"} <= ignored
    assert not any(p.startswith("wheels") for p in ignored)

"""Rate limits: per API key (its prefix), per address without a key, failed authentications per address."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.config import Settings
from app.db.tables import Role
from tests.api.helpers import assert_error

Headers = Callable[[Role | str], dict[str, str]]


@pytest.fixture
def limits(app: FastAPI) -> Iterator[Callable[..., None]]:
    """``limits(rate_limit="5/minute", auth_failure_limit=...)`` turns the limits on for this test."""

    def configure(enabled: bool = True, **values: str) -> None:
        update = {"rate_limit_enabled": enabled, **values}
        app.state.settings = app.state.settings.model_copy(update=update)

    app.state.limiter.reset()
    yield configure
    app.state.limiter.reset()


def _retry_after(r: object) -> int:
    error = assert_error(r, 429, "rate_limited")
    retry_after = int(r.headers["Retry-After"])  # type: ignore[attr-defined]
    assert 1 <= retry_after <= 60 and error["details"]["retry_after_s"] == retry_after
    return retry_after


def test_each_key_has_its_own_budget(
    client: TestClient, as_role: Headers, limits: Callable[..., None]
) -> None:
    limits(rate_limit="5/minute")
    viewer, engineer = as_role(Role.viewer), as_role(Role.engineer)
    for _ in range(5):
        assert client.get("/v1/lots", headers=viewer).status_code == 200
    _retry_after(client.get("/v1/lots", headers=viewer))
    _retry_after(client.get("/v1/dies", headers=viewer))  # one budget over the whole API
    # The bearer form of the same key shares it; another key has its own.
    bearer = {"Authorization": f"Bearer {viewer['X-API-Key']}"}
    _retry_after(client.get("/v1/lots", headers=bearer))
    assert client.get("/v1/lots", headers=engineer).status_code == 200
    # The probes are exempt.
    assert client.get("/healthz").status_code == 200


def test_requests_without_a_key_are_counted_per_address(
    client: TestClient, limits: Callable[..., None]
) -> None:
    limits(rate_limit="3/minute", auth_failure_limit="100/minute")
    for _ in range(3):
        assert client.get("/dashboard").status_code == 200
    _retry_after(client.get("/dashboard"))
    _retry_after(client.get("/v1/lots"))  # no key: the address's budget, spent


def test_failed_authentications_block_the_address(
    client: TestClient, as_role: Headers, limits: Callable[..., None]
) -> None:
    limits(auth_failure_limit="4/minute")
    # Each guess under a new prefix: the per-key limit never sees the same caller twice.
    for i in range(4):
        r = client.get("/v1/lots", headers={"X-API-Key": f"cim_guess{i:03d}_" + "x" * 40})
        assert_error(r, 401, "unauthenticated")
    _retry_after(client.get("/v1/lots", headers={"X-API-Key": "cim_guess999_" + "x" * 40}))
    _retry_after(client.get("/v1/lots", headers=as_role(Role.viewer)))  # the address is blocked
    assert client.get("/healthz").status_code == 200


def test_300_wrong_key_requests_get_429_with_the_default_limits(
    client: TestClient, limits: Callable[..., None]
) -> None:
    limits()  # the defaults
    statuses = [
        client.get("/v1/lots", headers={"X-API-Key": "cim_1a2b3c4d_wrong" + "x" * 30}).status_code
        for _ in range(300)
    ]
    assert statuses.count(401) == 30 and set(statuses[30:]) == {429}


def test_disabled_limits_count_nothing(
    client: TestClient, as_role: Headers, limits: Callable[..., None]
) -> None:
    limits(enabled=False, rate_limit="1/minute", auth_failure_limit="1/minute")
    for _ in range(3):
        assert client.get("/v1/lots", headers=as_role(Role.viewer)).status_code == 200


def test_limits_are_validated_when_the_settings_load() -> None:
    assert Settings(rate_limit="10/second;600/minute").rate_limit == "10/second;600/minute"
    with pytest.raises(ValueError, match="rate_limit"):
        Settings(rate_limit="lots")

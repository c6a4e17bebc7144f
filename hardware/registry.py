"""Driver discovery through the ``cimcal.drivers`` entry-point group, option validation, construction.

A third-party package registers its driver class in its own pyproject::

    [project.entry-points."cimcal.drivers"]
    mytester = "mypkg.driver:MyTesterDriver"

The entry-point name must equal the class's ``Driver.name`` (the name selected with
``CIMCAL_DRIVER`` is the name recorded with every measurement). A plugin that fails to import, is
not a :class:`~hardware.driver.Driver` or breaks that rule is logged and skipped, and reported by name
in :func:`broken_drivers`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, entry_points
from importlib.metadata import version as dist_version
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError
from pydantic_core import to_jsonable_python

from hardware.driver import Driver

log = logging.getLogger(__name__)

GROUP = "cimcal.drivers"


class UnknownDriverError(LookupError):
    def __init__(self, name: str, available: list[str], broken: dict[str, str]) -> None:
        hint = f"; broken plugins: {broken}" if broken else ""
        super().__init__(f"no driver named {name!r}; available: {available}{hint}")
        self.name = name


class DriverOptionsError(ValueError):
    """Options that the driver's ``Options`` model refuses; ``errors`` is one line per bad field."""

    def __init__(self, driver: str, errors: list[str], source: str = "options") -> None:
        super().__init__(f"driver {driver!r} {source}: " + "; ".join(errors))
        self.driver = driver
        self.errors = errors


@dataclass(frozen=True)
class DriverEntry:
    """A registered driver: its class, version and where it comes from (``module:Class``)."""

    name: str
    cls: type[Driver]
    version: str
    source: str


def _fallback_version() -> str:
    try:
        return dist_version("cimcal")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


@cache
def _discover() -> tuple[dict[str, DriverEntry], dict[str, str]]:
    found: dict[str, DriverEntry] = {}
    broken: dict[str, str] = {}
    for ep in entry_points(group=GROUP):
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Driver)):
                raise TypeError(f"{ep.value} is not a hardware.driver.Driver subclass")
            if cls.name != ep.name:
                raise TypeError(
                    f"entry point {ep.name!r} loads a driver named {cls.name!r}; "
                    "the entry-point name must equal Driver.name"
                )
            if not (isinstance(cls.Options, type) and issubclass(cls.Options, BaseModel)):
                raise TypeError(f"{ep.value}.Options is not a pydantic model")
        except Exception as e:  # a broken plugin must not take the service down
            log.error("driver plugin %r failed to load: %s", ep.name, e)
            broken[ep.name] = f"{type(e).__name__}: {e}"
            continue
        version = cls.version or (ep.dist.version if ep.dist is not None else _fallback_version())
        found[ep.name] = DriverEntry(ep.name, cls, version, ep.value)
    if "simulated" not in found and "simulated" not in broken:
        # Running from a source tree that was never pip-installed: the built-in driver still exists.
        from hardware.sim.driver import SimulatedDriver

        found["simulated"] = DriverEntry(
            "simulated",
            SimulatedDriver,
            SimulatedDriver.version or _fallback_version(),
            "hardware.sim.driver:SimulatedDriver",
        )
    return found, broken


def available_drivers() -> list[str]:
    return sorted(_discover()[0])


def broken_drivers() -> dict[str, str]:
    return dict(_discover()[1])


def driver_entries() -> list[DriverEntry]:
    """Every registered driver, by name."""
    found = _discover()[0]
    return [found[n] for n in sorted(found)]


def driver_entry(name: str) -> DriverEntry:
    found, broken = _discover()
    try:
        return found[name]
    except KeyError:
        raise UnknownDriverError(name, sorted(found), broken) from None


def driver_class(name: str) -> type[Driver]:
    return driver_entry(name).cls


def driver_version(name: str) -> str:
    """The version recorded with measurements: ``Driver.version``, else its distribution's version."""
    return driver_entry(name).version


def validate_options(name: str, options: Mapping[str, Any] | None, *, source: str = "options") -> BaseModel:
    """``options`` checked by the driver's own ``Options`` model, defaults filled in.

    Raises :class:`DriverOptionsError` naming every bad field (``source`` says where they came from,
    e.g. ``"CIMCAL_DRIVER_OPTIONS"``); a secret's value never appears in the message.
    """
    model = driver_class(name).Options
    try:
        return model.model_validate(dict(options or {}))
    except ValidationError as e:
        errors = []
        for err in e.errors(include_input=False, include_url=False):
            where = ".".join(str(p) for p in err["loc"]) or "(options)"
            errors.append(f"{where}: {err['msg']}")
        raise DriverOptionsError(name, errors, source) from None


def create_driver(
    name: str = "simulated",
    options: Mapping[str, Any] | BaseModel | None = None,
    *,
    site: int = 0,
    resource: str | None = None,
) -> Driver:
    """An unconnected driver ``name`` for test site ``site`` and tester ``resource``, built from
    ``options`` (a mapping is validated first, see :func:`validate_options`)."""
    cls = driver_class(name)
    opts = options if isinstance(options, BaseModel) else validate_options(name, options)
    if not isinstance(opts, cls.Options):
        raise TypeError(f"options for {name!r} must be {cls.Options.__name__}, got {type(opts).__name__}")
    return cls.from_options(opts, site=site, resource=resource)


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr | SecretBytes):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return {k: _reveal(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, Mapping):
        return {str(k): _reveal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_reveal(v) for v in value]
    return value


def canonical_options_json(options: BaseModel) -> str:
    """The options as canonical JSON (sorted keys, no spaces, defaults included, secrets *revealed*):
    the input of :func:`options_sha256` only; never log or store it."""
    data = to_jsonable_python(_reveal(options), bytes_mode="hex")
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def options_sha256(options: BaseModel) -> str:
    """SHA-256 of :func:`canonical_options_json`: two configurations hash alike exactly when every
    option, secrets included, is equal; the secrets themselves cannot be read back from it."""
    return hashlib.sha256(canonical_options_json(options).encode()).hexdigest()


def public_options(options: BaseModel) -> dict[str, Any]:
    """The options for display: JSON values, every ``SecretStr`` / ``SecretBytes`` as ``**********``."""
    shown: dict[str, Any] = options.model_dump(mode="json")
    return shown


def options_schema(name: str) -> dict[str, Any]:
    """The JSON schema of the driver's ``Options`` (what ``cimcal drivers list`` shows)."""
    schema: dict[str, Any] = driver_class(name).Options.model_json_schema()
    return schema


def refresh() -> None:
    """Forget the discovered plugins (after installing one at run time, and in tests)."""
    _discover.cache_clear()

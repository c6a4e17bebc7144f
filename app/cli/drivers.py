"""``cimcal drivers``: list the registered tester drivers, check one against its tester."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from app.cli.base import Subcommands, subcommand
from app.config import get_settings


# ---------------------------------------------------------------------------------------------- drivers
def _schema_lines(schema: dict[str, Any]) -> list[str]:
    """One line per option: name, type, default, 'secret' for a SecretStr."""
    props = schema.get("properties") or {}
    if not props:
        return ["    (no options)"]
    required = set(schema.get("required") or [])
    lines = []
    for key, prop in props.items():
        kinds = [p.get("type", "?") for p in prop.get("anyOf", [prop])]
        secret = " secret" if prop.get("format") == "password" else ""
        default = " required" if key in required else f" = {prop.get('default')!r}"
        lines.append(f"    {key}: {' | '.join(map(str, kinds))}{secret}{default}")
    return lines


def _run_drivers_list(args: argparse.Namespace) -> int:
    import json

    from app.services.drivers import registered_drivers

    drivers, broken = registered_drivers()
    if args.json:
        out = {
            "drivers": [
                {"name": d.name, "version": d.version, "source": d.source, "options": d.options_schema}
                for d in drivers
            ],
            "broken": broken,
        }
        print(json.dumps(out, indent=2))
        return 0
    for d in drivers:
        print(f"{d.name} {d.version}  ({d.source})")
        print("\n".join(_schema_lines(d.options_schema)))
    for name, why in sorted(broken.items()):
        print(f"{name}  BROKEN: {why}")
    return 0


def _run_drivers_check(args: argparse.Namespace) -> int:
    import json

    from app.services.drivers import check_driver

    try:
        options = json.loads(args.options) if args.options else None
    except json.JSONDecodeError as e:
        print(f"cimcal: --options is not JSON: {e}", file=sys.stderr)
        return 2
    if options is not None and not isinstance(options, dict):
        print("cimcal: --options must be a JSON object", file=sys.stderr)
        return 2
    report = check_driver(
        get_settings(), args.name, options=options, site=args.site, resource=args.resource, die=args.die
    )
    print(f"driver {report.driver} {report.version}, site {report.site}, resource {report.resource or '-'}")
    print(f"options {json.dumps(report.options)}")
    for step in report.steps:
        mark = "ok  " if step.ok else "FAIL"
        print(f"  {mark} {step.name:<10} {1e3 * step.wall_s:9.1f} ms  {step.detail}")
    print(f"{'passed' if report.ok else 'FAILED'}; tester time charged {report.tester_s:.4f} s")
    return 0 if report.ok else 1


@subcommand
def _drivers(commands: Subcommands) -> None:
    from app.services.drivers import CHECK_DIE

    p = commands.add_parser("drivers", help="tester drivers: list them, check one against its tester")
    sub = p.add_subparsers(dest="drivers_command", required=True, metavar="COMMAND")
    ls = sub.add_parser("list", help="registered drivers with version and options; broken plugins with why")
    ls.add_argument("--json", action="store_true", help="print the full options JSON schemas")
    ls.set_defaults(run=_run_drivers_list)
    check = sub.add_parser(
        "check",
        help="connect, identify, geometry and one write/read round trip of a known pattern, with timings "
        "(exit status 0 when every step passed)",
    )
    check.add_argument("name", help="the driver's registered name")
    check.add_argument("--options", default=None, metavar="JSON", help="options over the configured ones")
    check.add_argument(
        "--site", type=int, default=0, help="test-site index (its configured resource/options)"
    )
    check.add_argument("--resource", default=None, help="the tester's address (default: the site's)")
    check.add_argument("--die", default=CHECK_DIE, metavar="ECID", help="where the prober steps")
    check.set_defaults(run=_run_drivers_check)

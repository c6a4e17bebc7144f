"""A source scan for the ways app code could reach the simulator's hidden truth that import-linter
cannot see: dynamic imports, string names of the simulator's modules, and attribute access into a
driver's private state (``driver.fleet``, ``driver._die``, ``driver._SimulatedDriver__fleet`` ...).

The names that count as a driver's internals are read from hardware/driver.py and
hardware/sim/driver.py themselves, so a new private attribute there is covered without an edit here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The classes whose private members are driver internals.
DRIVER_SOURCES = {
    "hardware/driver.py": ("Driver",),
    "hardware/sim/driver.py": ("SimulatedDriver", "SimulatedFleet"),
}
# Names that lead to the simulator's truth or its fleet even though they are not private.
FLEET_WORDS = frozenset({"fleet", "swap_fleet", "die_variation"})
# Module names whose mention in app code (outside docstrings) is a leak.
HIDDEN_MODULE = re.compile(r"\bhardware\.sim\b|\bhardware/sim\b")
MANGLED = re.compile(r"^_[A-Za-z]\w*__\w+")
DYNAMIC_IMPORTS = frozenset(
    {"import_module", "__import__", "find_spec", "spec_from_file_location", "run_module", "run_path",
     "module_from_spec"}
)
# Reflection that reads an object's private state whatever its attribute names.
REFLECTION = frozenset({"vars", "__getattribute__", "getmembers", "get_referents", "get_referrers"})
# Dynamic imports in app/ that were read and found not to reach the simulator: (file, function).
ALLOWED_DYNAMIC_IMPORTS = {
    # `cimcal bench NAME` runs bench/NAME.py from a source checkout (an offline benchmark, which
    # may use the ORACLE column); it is not a path that serves a chip.
    ("app/cli/offline.py", "_run_bench"),
    # CIMCAL_JOB_STEPS: an operator-named `module:function` of step functions (tests' job steps).
    ("app/jobs/celery_app.py", "load_steps"),
}


def _mangle(cls: str, name: str) -> str:
    return f"_{cls.lstrip('_')}{name}" if name.startswith("__") and not name.endswith("__") else name


def driver_private_names(root: Path = ROOT) -> frozenset[str]:
    """Every private method and attribute (mangled where Python mangles it) of the driver classes."""
    names: set[str] = set()
    for rel, classes in DRIVER_SOURCES.items():
        tree = ast.parse((root / rel).read_text())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in classes):
            for node in ast.walk(cls):
                name = None
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    name = node.name
                elif (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                ):
                    name = node.attr
                elif isinstance(node, ast.AnnAssign | ast.Assign):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    names.update(
                        t.id for t in targets if isinstance(t, ast.Name) and t.id.startswith("_")
                        and not t.id.endswith("__")
                    )
                if name and name.startswith("_") and not name.endswith("__"):
                    names.add(_mangle(cls.name, name))
    return frozenset(names)


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            v = body[0].value
            if isinstance(v, ast.Constant) and isinstance(v.value, str):
                out.add(id(v))
    return out


def _call_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _enclosing_functions(tree: ast.AST) -> dict[int, str]:
    owner: dict[int, str] = {}
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                owner.setdefault(id(node), fn.name)
    return owner


def scan_source(source: str, rel: str, private: frozenset[str]) -> list[str]:
    """The leaks in one file of app code, as ``"file:line: what"`` lines."""
    tree = ast.parse(source, filename=rel)
    docstrings = _docstrings(tree)
    owner = _enclosing_functions(tree)
    hidden_attrs = private | FLEET_WORDS
    out: list[str] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Call) and _call_name(node.func) in DYNAMIC_IMPORTS:
            if (rel, owner.get(id(node))) not in ALLOWED_DYNAMIC_IMPORTS:
                out.append(f"{rel}:{line}: dynamic import {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and _call_name(node.func) in REFLECTION and node.args:
            out.append(f"{rel}:{line}: reflection reads an object's private state: {ast.unparse(node)}")
        elif isinstance(node, ast.Attribute):
            receiver_is_own = isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}
            receiver_is_super = isinstance(node.value, ast.Call) and _call_name(node.value.func) == "super"
            if node.attr == "__dict__" or MANGLED.match(node.attr):
                out.append(f"{rel}:{line}: private state access .{node.attr}")
            elif node.attr in hidden_attrs and not (receiver_is_own or receiver_is_super):
                out.append(f"{rel}:{line}: driver internals .{node.attr} on {ast.unparse(node.value)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            s = node.value
            if HIDDEN_MODULE.search(s) or "oracle" in s.lower():
                out.append(f"{rel}:{line}: string names the simulator or its oracle: {s!r}")
            elif s in hidden_attrs or MANGLED.match(s):
                out.append(f"{rel}:{line}: string names a driver internal: {s!r}")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom):
                mods += [f"{node.module}.{a.name}" for a in node.names]
            if any(HIDDEN_MODULE.search(m) for m in mods):
                out.append(f"{rel}:{line}: imports the simulator: {ast.unparse(node)}")
    return out


def scan_app(root: Path = ROOT) -> list[str]:
    """Every leak in ``root/app`` (an empty list on a clean tree)."""
    private = driver_private_names(root)
    out: list[str] = []
    for f in sorted((root / "app").rglob("*.py")):
        out += scan_source(f.read_text(), f.relative_to(root).as_posix(), private)
    return out

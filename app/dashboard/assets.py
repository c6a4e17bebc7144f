"""Where the dashboard's files are: the HTML shell and script/style in this package, plotly.js in the
plotly Python package (its wheel bundles ``plotly.min.js``)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
PLOTLY_JS = "plotly.min.js"
_MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


@lru_cache
def shell_html() -> str:
    return (HERE / "index.html").read_text(encoding="utf-8")


@lru_cache
def plotly_js_path() -> Path | None:
    try:
        path = Path(str(resources.files("plotly") / "package_data" / PLOTLY_JS))
    except ModuleNotFoundError:
        return None
    return path if path.is_file() else None


def static_file(name: str) -> Path | None:
    """The file served as ``/dashboard/static/{name}``; ``None`` for anything else (no paths)."""
    if name == PLOTLY_JS:
        return plotly_js_path()
    if "/" in name or "\\" in name or name.startswith("."):
        return None
    path = STATIC_DIR / name
    return path if path.is_file() else None


def media_type(name: str) -> str:
    return _MEDIA_TYPES.get(Path(name).suffix, "application/octet-stream")

"""The browser dashboard: one static page (plain JavaScript, no build step) that reads the
``/api/v1`` endpoints and draws jobs, Pareto fronts and hypervolume curves with plotly.js.

Everything the page loads is served by the app itself: the machines it runs on have no internet,
so plotly.js comes from the installed ``plotly`` Python package, never from a CDN.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: The route of the bundled plotly.js; registered before the static mount so it wins.
PLOTLY_ROUTE = "/static/plotly.min.js"


@cache
def plotly_js_path() -> Path:
    """The minified plotly.js shipped inside the ``plotly`` Python package."""
    try:
        import plotly
    except ImportError as exc:  # pragma: no cover - plotly is a declared dependency
        raise RuntimeError("the dashboard needs the 'plotly' package (pip install plotly)") from exc
    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    if not path.is_file():  # pragma: no cover - a broken plotly install
        raise RuntimeError(f"plotly.min.js not found at {path}")
    return path


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard page at ``/`` and its assets under ``/static``."""
    index_html = STATIC_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    def dashboard_page() -> FileResponse:
        # no-cache: the page is tiny and a stale copy after an upgrade would call old endpoints.
        return FileResponse(
            index_html, media_type="text/html", headers={"Cache-Control": "no-cache"}
        )

    @app.get(PLOTLY_ROUTE, include_in_schema=False)
    def plotly_js() -> FileResponse:
        try:
            path = plotly_js_path()
        except RuntimeError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        # The file only changes with the installed package, so browsers may keep it a day.
        return FileResponse(
            path,
            media_type="application/javascript",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")

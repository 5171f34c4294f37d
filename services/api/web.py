"""The chart page's files: ``/`` (web/index.html), ``/static/…`` (web/) and
``/static/vendor/lightweight-charts/…`` (the charting library npm installed under
web/node_modules by ``make web``). Where they are is ``barstream.webassets``' business;
when they are missing the routes answer 404 with what to run.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from barstream import webassets
from barstream.shared.errors import WebAssetsMissing


def _dirs() -> tuple[Path | None, Path | None]:
    try:  # barstream.webassets knows where web/ and the npm-installed library are
        web: Path | None = webassets.web_dir()
    except WebAssetsMissing:
        return None, None
    return web, webassets.vendor_dir(web)


def _missing(what: str) -> Response:
    return JSONResponse(
        {"error": "not-installed", "message": f"{what} is not installed: run `make web`"},
        status_code=404,
    )


def routes() -> list[Route | Mount]:
    web, vendor = _dirs()
    out: list[Route | Mount] = []

    async def index(request: Request) -> Response:
        if web is None or not (web / "index.html").is_file():
            return _missing("the chart page (web/index.html)")
        return FileResponse(web / "index.html", headers={"Cache-Control": "no-cache"})

    out.append(Route("/", index))
    if vendor is not None:
        out.append(Mount("/static/vendor/lightweight-charts", StaticFiles(directory=vendor)))
    else:

        async def no_vendor(request: Request) -> Response:
            return _missing("the charting library (web/node_modules/lightweight-charts)")

        out.append(Route("/static/vendor/{path:path}", no_vendor))
    if web is not None:
        out.append(Mount("/static", StaticFiles(directory=web)))
    return out

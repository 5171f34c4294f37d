"""Where the chart page's files are, for ``barstream serve`` to mount.

    web_dir()        the page: index.html at ``/``, its modules and stylesheet (chart.js,
                     series.js, status.js, chart.css) at ``/static/``
    vendor_dir()     the charting library npm installed (lightweight-charts' ``dist/``), at
                     ``VENDOR_URL``; None when ``make web`` has not run
    require_vendor_dir()  the same, or WebAssetsMissing saying to run ``make web``

The page is web/ beside the package in a checkout, or package data
``barstream.resources/web`` in an installed build that ships it. The library is not in the
repository: ``make web`` runs ``npm ci`` (web/package-lock.json pins the version) into
web/node_modules, so the page works with no internet access and nothing comes from a CDN.
The page imports exactly ``VENDOR_URL/LIBRARY_FILE`` (web/chart.js says the same).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Final

from barstream.shared.errors import WebAssetsMissing

#: The npm package of the charting library, and the build of it the page imports: the
#: standalone ES module (its one dependency, fancy-canvas, bundled in), minified.
LIBRARY: Final = "lightweight-charts"
LIBRARY_FILE: Final = "lightweight-charts.standalone.production.mjs"
#: Where the API serves ``vendor_dir()``.
VENDOR_URL: Final = f"/static/vendor/{LIBRARY}"
#: The page's entry file: a folder holding it is a web dir.
INDEX: Final = "index.html"


def web_dir() -> Path:
    """The chart page's folder: the checkout's web/, else the packaged copy."""
    for candidate in _candidates():
        if (candidate / INDEX).is_file():
            return candidate
    tried = ", ".join(str(c) for c in _candidates())
    raise WebAssetsMissing(tried, f"no chart page ({INDEX}) in any of these")


def vendor_dir(web: Path | None = None) -> Path | None:
    """The installed library's ``dist/`` under ``web`` (default ``web_dir()``), or None."""
    dist = (web or web_dir()) / "node_modules" / LIBRARY / "dist"
    return dist if (dist / LIBRARY_FILE).is_file() else None


def require_vendor_dir(web: Path | None = None) -> Path:
    """``vendor_dir()``, or WebAssetsMissing naming the file that is missing."""
    found = vendor_dir(web)
    if found is None:
        want = (web or web_dir()) / "node_modules" / LIBRARY / "dist" / LIBRARY_FILE
        raise WebAssetsMissing(
            str(want), f"the chart page's charting library ({LIBRARY}, from npm) is not installed"
        )
    return found


def _candidates() -> list[Path]:
    checkout = Path(__file__).resolve().parent.parent / "web"
    packaged = Path(str(resources.files("barstream.resources").joinpath("web")))
    return [checkout, packaged]

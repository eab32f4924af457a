"""The fleet page's files, as the receiver serves them, and the policy that keeps the page offline.

The page's own files come from this package; the map library (Leaflet, and its marker clustering)
from the installed `xstatic-leaflet` and `xstatic-leaflet-markercluster` packages (the `cloud`
extra), read once at start: nothing is copied into the repository, nothing comes from a CDN. The
page's settings (the map's tile server, if any) are one more file, `/page-config.json`. The
Content-Security-Policy lets the page load these alone, plus the tiles when a tile server is set.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Final
from urllib.parse import urlsplit

from cloud.errors import ConfigError
from cloud.settings import WebSettings

_OWN: Final = "cloud.web"
_LEAFLET: Final = "xstatic.pkg.leaflet"
_CLUSTER: Final = "xstatic.pkg.leaflet_markercluster"
_JS: Final = "text/javascript; charset=utf-8"
_CSS: Final = "text/css; charset=utf-8"

# URL path → (package, file inside it, Content-Type)
PAGE_FILES: Final = {
    "/": (_OWN, "index.html", "text/html; charset=utf-8"),
    "/app.js": (_OWN, "app.js", _JS),
    "/common.js": (_OWN, "common.js", _JS),
    "/charts.js": (_OWN, "charts.js", _JS),
    "/fleet.js": (_OWN, "fleet.js", _JS),
    "/map.js": (_OWN, "map.js", _JS),
    "/reports.js": (_OWN, "reports.js", _JS),
    "/style.css": (_OWN, "style.css", _CSS),
    "/lib/leaflet.js": (_LEAFLET, "data/leaflet.js", _JS),
    "/lib/leaflet.css": (_LEAFLET, "data/leaflet.css", _CSS),
    "/lib/leaflet.markercluster.js": (_CLUSTER, "data/leaflet.markercluster.js", _JS),
    "/lib/MarkerCluster.css": (_CLUSTER, "data/MarkerCluster.css", _CSS),
    "/lib/MarkerCluster.Default.css": (_CLUSTER, "data/MarkerCluster.Default.css", _CSS),
}
PAGE_CONFIG: Final = "/page-config.json"
PAGE_PATHS: Final = (*PAGE_FILES, PAGE_CONFIG)


def page_config(settings: WebSettings) -> dict[str, object]:
    """What the page needs to know of the settings: the map's tiles (None: a blank map)."""
    return {
        "tile_url": settings.map_tile_url,
        "attribution": settings.map_attribution,
        "subdomains": settings.map_subdomains,
    }


def tile_sources(settings: WebSettings) -> str:
    """The CSP source of the tile server ("" without one); `{s}` subdomains become a wildcard."""
    if settings.map_tile_url is None:
        return ""
    parts = urlsplit(settings.map_tile_url)
    return f"{parts.scheme}://{parts.netloc.replace('{s}', '*')}"


def content_security_policy(settings: WebSettings) -> str:
    tiles = tile_sources(settings)
    images = f"'self' data: {tiles}".strip()
    return (
        f"default-src 'self'; img-src {images}; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'"
    )


def page_files(settings: WebSettings) -> dict[str, tuple[bytes, str]]:
    """URL path → (body, Content-Type) of every file of the page; read once, at start."""
    try:
        files = {
            path: (resources.files(package).joinpath(name).read_bytes(), kind)
            for path, (package, name, kind) in PAGE_FILES.items()
        }
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise ConfigError(
            f"the fleet page's map library is not installed ({err}): pip install 'voltgate[cloud]'"
        ) from err
    files[PAGE_CONFIG] = (json.dumps(page_config(settings)).encode(), "application/json; charset=utf-8")
    return files

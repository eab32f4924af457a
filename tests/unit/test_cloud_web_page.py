"""The fleet page's pure parts: pairing latitude and longitude into a position, the map settings,
the page's files and its Content-Security-Policy."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cloud.settings import WebSettings
from cloud.web import assets
from cloud.web.queries import LOCATION_PAIRING, Reading, paired_position
from protocols.catalog import DEFAULT_CATALOG, load_catalog
from protocols.signals import LATITUDE, LONGITUDE

T0 = datetime(2026, 3, 2, 4, 3, 19, tzinfo=UTC)


def at(seconds: float, value: float) -> Reading:
    return Reading(T0 + timedelta(seconds=seconds), value)


def test_the_pairing_tolerance_is_the_position_heartbeat() -> None:
    # a coordinate not sent again within its heartbeat has not moved beyond its deadband
    catalog = load_catalog(DEFAULT_CATALOG)
    for name in (LATITUDE, LONGITUDE):
        assert catalog.by_name(name).policy.max_interval_s == LOCATION_PAIRING.total_seconds()


def test_coordinates_read_seconds_apart_make_one_position() -> None:
    # GIVEN a standing bus: latitude at 04:03:19, longitude at 04:03:21 (as the agent samples them)
    lat, lon = at(0, -1.2921), at(2, 36.8219)
    # WHEN paired (the query gives each latest reading and the other's nearest within the tolerance)
    position = paired_position(lat, lon, lon, lat)
    # THEN one position, stamped with the newer reading
    assert position is not None
    assert (position.latitude, position.longitude, position.at) == (-1.2921, 36.8219, lon.ts)


def test_the_newest_complete_pair_wins() -> None:
    # GIVEN a newest latitude with no longitude near it, and an older pair
    newest_lat, older_lat, older_lon = at(300, -1.30), at(0, -1.29), at(1, 36.82)
    position = paired_position(newest_lat, None, older_lon, older_lat)
    assert position is not None and (position.latitude, position.longitude) == (-1.29, 36.82)


def test_no_pair_no_position() -> None:
    assert paired_position(at(0, -1.29), None, at(300, 36.82), None) is None
    assert paired_position(None, None, None, None) is None


@given(
    lat_s=st.floats(0, 3600),
    lon_s=st.floats(0, 3600),
    near_lat_s=st.floats(0, 3600),
    near_lon_s=st.floats(0, 3600),
)
def test_the_position_is_one_of_the_given_pairs(
    lat_s: float, lon_s: float, near_lat_s: float, near_lon_s: float
) -> None:
    lat, lon, lat_near, lon_near = at(lat_s, 1.0), at(lon_s, 2.0), at(near_lat_s, 3.0), at(near_lon_s, 4.0)
    position = paired_position(lat, lon_near, lon, lat_near)
    assert position is not None
    assert (position.latitude, position.longitude) in ((1.0, 4.0), (3.0, 2.0))
    chosen = (lat, lon_near) if position.latitude == 1.0 else (lat_near, lon)
    assert position.at == max(r.ts for r in chosen)
    other = (lat_near, lon) if position.latitude == 1.0 else (lat, lon_near)
    assert min(r.ts for r in chosen) >= min(r.ts for r in other)


@pytest.mark.parametrize(
    "url",
    [
        "https://tile.openstreetmap.org/{z}/{x}/{y}.png",
        "https://{s}.tiles.example.net:8443/base/{z}/{x}/{y}@2x.png?key=abc",
        "http://127.0.0.1:8081/tiles/{z}/{x}/{y}.png",
    ],
)
def test_a_tile_url_template_is_accepted(url: str) -> None:
    assert WebSettings(map_tile_url=url).map_tile_url == url


@pytest.mark.parametrize(
    "url",
    [
        "tile.openstreetmap.org/{z}/{x}/{y}.png",  # no scheme
        "ftp://tiles.example.net/{z}/{x}/{y}.png",
        "https://tiles.example.net/{z}/{y}.png",  # no {x}
        "https://tiles.example.net/{z}/{x}/{y}.png'; script-src *",  # would widen the page's policy
    ],
)
def test_a_bad_tile_url_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="tile URL template"):
        WebSettings(map_tile_url=url)


def test_offline_the_page_loads_nothing_from_elsewhere() -> None:
    settings = WebSettings()
    policy = assets.content_security_policy(settings)
    assert "img-src 'self' data:;" in policy and "http" not in policy
    files = assets.page_files(settings)
    assert json.loads(files[assets.PAGE_CONFIG][0])["tile_url"] is None
    # Leaflet and its clustering come from the installed packages, not from the repository
    assert b"Leaflet" in files["/lib/leaflet.js"][0]
    assert b"MarkerClusterGroup" in files["/lib/leaflet.markercluster.js"][0]
    assert set(files) == set(assets.PAGE_PATHS)


def test_with_a_tile_server_its_images_are_allowed() -> None:
    template = "https://{s}.tiles.example.net/{z}/{x}/{y}.png"
    settings = WebSettings(map_tile_url=template, map_attribution="© X")
    assert "img-src 'self' data: https://*.tiles.example.net;" in assets.content_security_policy(settings)
    config = json.loads(assets.page_files(settings)[assets.PAGE_CONFIG][0])
    assert config == {
        "tile_url": settings.map_tile_url,
        "attribution": "© X",
        "subdomains": "abc",
        "max_range_days": settings.max_range_days,
    }

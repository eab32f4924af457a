"""Route 102 (Digital Matatus GTFS, CC BY 4.0): geometry, elevation and lookups are plausible."""

from __future__ import annotations

import math

import pytest
from haversine import Unit, haversine

from simulator.route import Route, nairobi_route_102


@pytest.fixture(scope="module")
def route() -> Route:
    return nairobi_route_102()


def test_route_has_51_real_stops_about_21_km(route: Route) -> None:
    assert len(route.stops) == 51
    assert 18_000 < route.length_m < 24_000
    assert route.stops[0].stop_id == "0001RLW"  # Railways terminus, where the depot is
    assert route.stops[-1].stop_id == "0713KKY"  # Kikuyu
    spacing = [b.distance_m - a.distance_m for a, b in zip(route.stops, route.stops[1:], strict=False)]
    assert all(s > 50 for s in spacing)
    assert 300 < sum(spacing) / len(spacing) < 600  # urban stop spacing


def test_coordinates_are_in_nairobi(route: Route) -> None:
    for s in route.stops:
        assert -1.35 < s.lat_deg < -1.20
        assert 36.60 < s.lon_deg < 36.90


def test_elevation_and_grade_are_plausible(route: Route) -> None:
    elevations = [route.elevation_m(d) for d in range(0, int(route.length_m), 50)]
    assert 1_600 < min(elevations) < 1_700
    assert 1_900 < max(elevations) < 2_050
    grades = [route.grade(d) for d in range(0, int(route.length_m), 50)]
    assert max(abs(g) for g in grades) < 0.08
    assert sum(grades) / len(grades) > 0.005  # rising westward towards Kikuyu


def test_position_follows_the_route(route: Route) -> None:
    lat0, lon0, _ = route.position(0.0)
    assert (lat0, lon0) == (route.stops[0].lat_deg, route.stops[0].lon_deg)
    prev = route.position(0.0)
    for d in range(10, int(route.length_m), 10):
        cur = route.position(float(d))
        step = haversine(prev[:2], cur[:2], unit=Unit.METERS)
        assert step == pytest.approx(10.0, abs=0.5)
        assert 0.0 <= cur[2] < 360.0
        prev = cur
    lat, lon, _ = route.position(route.length_m)
    assert math.isclose(lat, route.stops[-1].lat_deg) and math.isclose(lon, route.stops[-1].lon_deg)

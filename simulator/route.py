"""A real bus route: stops with coordinates, cumulative distance, elevation and grade, position at a distance.

The default route is Nairobi matatu route 102 "Railways – Ngong Road – Kawangware – Kikuyu" from the
Digital Matatus GTFS feed (CC BY 4.0, Digital Matatus project; see `simulator/data/README.md`). The road is
approximated by straight lines between consecutive stops (stops are ~380 m apart, so the shape is close).

Distances are measured along the route from the Railways terminus (distance 0, where the depot is) towards
Kikuyu. A bus running the other way is at route distance `length_m - travelled`.
"""

from __future__ import annotations

import csv
import math
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from haversine import Unit, haversine

DATA_DIR = Path(__file__).parent / "data"
ROUTE_102_STOPS_CSV = DATA_DIR / "nairobi_route_102_stops.csv"

# Approximate ground elevation (m above sea level) along route 102, as a function of longitude: central
# Nairobi sits at about 1,660-1,680 m and the land rises westward along Ngong Road towards Kikuyu (~2,000 m).
# These are rough anchor heights read from general topographic knowledge, NOT from a DEM; they give the
# right sign and size of the mean grade (~1.6 % uphill outbound). A small synthetic undulation is added.
_ELEVATION_ANCHORS_LON_M: tuple[tuple[float, float], ...] = (
    (36.665, 1980.0),
    (36.680, 1940.0),
    (36.700, 1890.0),
    (36.720, 1840.0),
    (36.740, 1795.0),
    (36.760, 1765.0),
    (36.780, 1735.0),
    (36.800, 1700.0),
    (36.829, 1665.0),
)
_UNDULATION_AMPLITUDE_M = 4.0  # synthetic local ups and downs (not measured)
_UNDULATION_WAVELENGTH_M = 1400.0
_GRADE_SMOOTHING_M = 150.0  # grade is the elevation slope over this baseline (a bus is 12 m long)

# Road speed limits (km/h) by route distance band: CBD streets, then Ngong Road dual carriageway, then the
# single carriageway towards Kikuyu. Assumed, typical of Kenyan urban roads (50 km/h urban default).
_SPEED_LIMIT_BANDS_KMH: tuple[tuple[float, float], ...] = ((2_500.0, 40.0), (9_000.0, 60.0), (1e12, 50.0))


@dataclass(frozen=True, slots=True)
class Stop:
    stop_id: str
    lat_deg: float
    lon_deg: float
    distance_m: float  # along the route from the depot end


def initial_bearing_deg(lat1_deg: float, lon1_deg: float, lat2_deg: float, lon2_deg: float) -> float:
    p1, p2 = math.radians(lat1_deg), math.radians(lat2_deg)
    dl = math.radians(lon2_deg - lon1_deg)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


class Route:
    """A polyline through the stops with distance, elevation, grade and speed limit lookups."""

    def __init__(self, name: str, stops: list[tuple[str, float, float]], elevation_m: list[float]) -> None:
        if len(stops) < 2 or len(elevation_m) != len(stops):
            raise ValueError("a route needs at least two stops and one elevation per stop")
        self.name = name
        self._lat = [s[1] for s in stops]
        self._lon = [s[2] for s in stops]
        cum = [0.0]
        for i in range(1, len(stops)):
            leg = (self._lat[i - 1], self._lon[i - 1]), (self._lat[i], self._lon[i])
            cum.append(cum[-1] + haversine(*leg, unit=Unit.METERS))
        self._cum_m = cum
        self._heading_deg = [
            initial_bearing_deg(self._lat[i], self._lon[i], self._lat[i + 1], self._lon[i + 1])
            for i in range(len(stops) - 1)
        ]
        self.length_m = cum[-1]
        self.stops = tuple(Stop(s[0], s[1], s[2], d) for s, d in zip(stops, cum, strict=True))
        # Elevation on a 10 m grid: anchors at the stops plus undulation; grade from a centred difference.
        self._grid_step_m = 10.0
        grid = np.arange(0.0, self.length_m + self._grid_step_m, self._grid_step_m)
        elev = np.interp(grid, np.asarray(cum), np.asarray(elevation_m))
        elev = elev + _UNDULATION_AMPLITUDE_M * np.sin(2 * np.pi * grid / _UNDULATION_WAVELENGTH_M)
        half = max(1, round(_GRADE_SMOOTHING_M / 2 / self._grid_step_m))
        padded = np.concatenate([np.full(half, elev[0]), elev, np.full(half, elev[-1])])
        grade = (padded[2 * half :] - padded[: -2 * half]) / (2 * half * self._grid_step_m)
        self._elev_grid: list[float] = elev.tolist()
        self._grade_grid: list[float] = grade.tolist()

    @property
    def depot_distance_m(self) -> float:
        return 0.0

    @property
    def stop_distances_m(self) -> tuple[float, ...]:
        return tuple(s.distance_m for s in self.stops)

    def _grid_index(self, distance_m: float) -> int:
        i = int(min(max(distance_m, 0.0), self.length_m) / self._grid_step_m)
        return min(i, len(self._elev_grid) - 1)

    def elevation_m(self, distance_m: float) -> float:
        return float(self._elev_grid[self._grid_index(distance_m)])

    def grade(self, distance_m: float) -> float:
        """Rise over run (0.02 = 2 % uphill) in the direction of increasing route distance."""
        return float(self._grade_grid[self._grid_index(distance_m)])

    def speed_limit_kmh(self, distance_m: float) -> float:
        for end_m, limit in _SPEED_LIMIT_BANDS_KMH:
            if distance_m < end_m:
                return limit
        return _SPEED_LIMIT_BANDS_KMH[-1][1]

    def position(self, distance_m: float) -> tuple[float, float, float]:
        """(lat_deg, lon_deg, heading_deg) at a route distance, heading towards increasing distance."""
        d = min(max(distance_m, 0.0), self.length_m)
        i = min(bisect_right(self._cum_m, d) - 1, len(self._heading_deg) - 1)
        seg = self._cum_m[i + 1] - self._cum_m[i]
        f = (d - self._cum_m[i]) / seg if seg > 0 else 0.0
        lat = self._lat[i] + f * (self._lat[i + 1] - self._lat[i])
        lon = self._lon[i] + f * (self._lon[i + 1] - self._lon[i])
        return lat, lon, self._heading_deg[i]


def _elevation_for_lon(lon_deg: float) -> float:
    lons = [a[0] for a in _ELEVATION_ANCHORS_LON_M]
    heights = [a[1] for a in _ELEVATION_ANCHORS_LON_M]
    return float(np.interp(lon_deg, lons, heights))


def load_stops_csv(path: Path) -> list[tuple[str, float, float]]:
    with path.open(newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["stop_sequence"]))
    return [(r["stop_id"], float(r["stop_lat"]), float(r["stop_lon"])) for r in rows]


def nairobi_route_102() -> Route:
    """Route 102 from the Railways terminus (CBD, depot end) to Kikuyu, ~18 km, 51 stops."""
    stops = list(reversed(load_stops_csv(ROUTE_102_STOPS_CSV)))  # the source lists Kikuyu first
    elevation = [_elevation_for_lon(lon) for _, _, lon in stops]
    return Route("Nairobi 102 Railways-Ngong Rd-Kawangware-Kikuyu", stops, elevation)

"""Trips, in SQL from the samples' intervals (`kpi_intervals`) and GPS legs (`gps_distance`).

A trip is a period of movement, from its first moving interval to the end of its last, whose stops
inside are all shorter than the trip gap (`TRIP_GAP_S` unless given: bus stops and lights stay
inside a trip, a layover ends it). A stretch without readings counts as a stop. Per trip: moving
time, distance from the odometer (last reading in the trip minus the first) and from GPS (the legs
between fixes within the trip, as `gps_distance`), energy used as the daily energy_used_kwh
(internal stops included, charging left out), kWh/km, SOC and position at the first and last
reading within it. Trips are cut at the range's ends, as charging sessions are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Final

import psycopg

from cloud.gps_distance import GPS_LEGS_CTE, GPS_PARAMS
from cloud.kpi_intervals import INTERVALS_CTE, fetch_rows, query_params

TRIP_GAP_S: Final = 300.0  # a stop (or a stretch without data) at least this long ends a trip


@dataclass(frozen=True, slots=True)
class Trip:
    vehicle_id: str
    started_at: datetime
    ended_at: datetime
    duration_s: float
    moving_s: float
    distance_km: float | None  # odometer
    gps_distance_km: float | None
    energy_used_kwh: float | None
    kwh_per_km: float | None
    soc_start_pct: float | None
    soc_end_pct: float | None
    start_lat: float | None
    start_lon: float | None
    end_lat: float | None
    end_lon: float | None


# After `kpi_intervals.INTERVALS_CTE`: each interval with its trip, numbered by the trips' starts.
TRIP_MARKS_CTE: Final = b""",
trip_marks AS (     -- a moving interval starts a trip unless a moving one ended less than the gap before
    SELECT *, sum(starts::int) OVER (PARTITION BY vehicle_id ORDER BY ts) AS trip
    FROM (
        SELECT *, moving AND coalesce(
                   extract(epoch FROM ts - max(next_ts) FILTER (WHERE moving) OVER earlier) >= %(trip_gap)s,
                   true) AS starts
        FROM intervals
        WINDOW earlier AS (PARTITION BY vehicle_id ORDER BY ts
                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
    ) marked
)"""

TRIPS_SQL: Final = (
    INTERVALS_CTE
    + TRIP_MARKS_CTE
    + GPS_LEGS_CTE
    + b"""
, trip_spans AS (   -- a trip's intervals, each with the trip's span (its moving intervals, first to last)
    SELECT *, min(ts) OVER t AS trip_start, max(next_ts) FILTER (WHERE moving) OVER t AS trip_end
    FROM trip_marks WHERE trip > 0
    WINDOW t AS (PARTITION BY vehicle_id, trip)
),
trips AS (          -- the stop that ends a trip is not part of it
    SELECT vehicle_id, trip, min(trip_start) AS started_at, min(trip_end) AS ended_at,
           coalesce(sum(dt_s) FILTER (WHERE moving), 0) AS moving_s,
           sum(power_w * dt_s) FILTER (WHERE NOT charging) / 3.6e6 AS energy_used_kwh
    FROM trip_spans WHERE ts < trip_end
    GROUP BY vehicle_id, trip
),
trip_events AS (    -- kind 0 a trip's start, 1 an odometer or SOC reading, 2 a GPS fix, 3 a GPS leg
    SELECT vehicle_id, started_at AS ts, 0 AS kind, trip, started_at, ended_at, NULL::text AS signal,
           NULL::float8 AS value, NULL::float8 AS lat, NULL::float8 AS lon, NULL::timestamptz AS from_ts,
           NULL::float8 AS km
    FROM trips
    UNION ALL
    SELECT vehicle_id, ts, 1, NULL, NULL, NULL, signal, value, NULL, NULL, NULL, NULL
    FROM s WHERE signal IN (%(odo)s, %(soc)s)
    UNION ALL
    SELECT vehicle_id, ts, 2, NULL, NULL, NULL, NULL, NULL, lat, lon, NULL, NULL FROM fixes
    UNION ALL
    SELECT vehicle_id, ts, 3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, from_ts, km FROM gps_legs
),
in_trips AS (       -- each event after a trip's start with that trip (the latest one started), if within it
    SELECT * FROM (
        SELECT vehicle_id, ts, kind, signal, value, lat, lon, from_ts, km,
               max(trip) OVER w AS trip, max(started_at) OVER w AS trip_start,
               max(ended_at) OVER w AS trip_end
        FROM trip_events
        WINDOW w AS (PARTITION BY vehicle_id ORDER BY ts, kind ROWS UNBOUNDED PRECEDING)
    ) e
    WHERE kind > 0 AND ts <= trip_end AND (kind < 3 OR from_ts >= trip_start)
),
trip_readings AS MATERIALIZED (  -- once: joined to `trips`, it is estimated at a row and rescanned per trip
    SELECT vehicle_id, trip,
           max(value) FILTER (WHERE signal = %(odo)s) - min(value) FILTER (WHERE signal = %(odo)s)
               AS distance_km,
           sum(km) FILTER (WHERE kind = 3) AS gps_distance_km,
           (array_agg(value ORDER BY ts) FILTER (WHERE signal = %(soc)s))[1] AS soc_start_pct,
           (array_agg(value ORDER BY ts DESC) FILTER (WHERE signal = %(soc)s))[1] AS soc_end_pct,
           (array_agg(lat ORDER BY ts) FILTER (WHERE kind = 2))[1] AS start_lat,
           (array_agg(lon ORDER BY ts) FILTER (WHERE kind = 2))[1] AS start_lon,
           (array_agg(lat ORDER BY ts DESC) FILTER (WHERE kind = 2))[1] AS end_lat,
           (array_agg(lon ORDER BY ts DESC) FILTER (WHERE kind = 2))[1] AS end_lon
    FROM in_trips GROUP BY vehicle_id, trip
)
SELECT vehicle_id, started_at, ended_at, extract(epoch FROM ended_at - started_at)::float8 AS duration_s,
       moving_s, distance_km, gps_distance_km, energy_used_kwh,
       CASE WHEN distance_km >= %(min_km)s THEN energy_used_kwh / distance_km END AS kwh_per_km,
       soc_start_pct, soc_end_pct, start_lat, start_lon, end_lat, end_lon
FROM trips LEFT JOIN trip_readings USING (vehicle_id, trip)
ORDER BY vehicle_id, started_at
"""
)


async def trips(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    day_from: date,
    day_to: date,
    *,
    tz: str = "UTC",
    vehicle_id: str | None = None,
    trip_gap_s: float = TRIP_GAP_S,
) -> list[Trip]:
    """Trips within `day_from`..`day_to` (cut at the range's ends), by bus then start."""
    params = query_params(day_from, day_to, tz, vehicle_id, trip_gap=trip_gap_s, **GPS_PARAMS)
    return await fetch_rows(conn, TRIPS_SQL, params, Trip)
